//! Open multipart uploads on S3: finding and aborting the ones a failed run could not.
//!
//! A run that fails aborts its upload, but not when the store is what failed: the
//! abort is then lost too, and an upload whose creation timed out may exist without bk
//! ever learning its ID. Such uploads hold their parts (and cost storage) until someone
//! aborts them. object_store cannot list them, so this module sends S3's
//! `ListMultipartUploads` itself, as a URL presigned by object_store's own signer (the
//! same credentials, region and endpoint as every other request), and aborts through
//! object_store's `MultipartStore`. `bk gc` uses it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::aws::AmazonS3;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};

const STORE: &str = "S3";

/// How long a listing URL stays valid: one request, sent at once.
const URL_LIFETIME: Duration = Duration::from_secs(300);

/// How long one listing request may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Uploads listed per request (S3's maximum).
const PAGE: &str = "1000";

/// The open uploads of one S3 repository.
#[derive(Debug, Clone)]
pub struct S3Uploads {
    s3: Arc<AmazonS3>,
    /// The repository's prefix in the bucket (`""` or ending in `/`).
    prefix: String,
    http: reqwest::Client,
}

/// One multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpenUpload {
    /// The object key, relative to the repository.
    pub key: String,
    pub upload_id: String,
    pub initiated: DateTime<Utc>,
}

impl S3Uploads {
    /// `prefix` is the repository's path in the bucket.
    pub fn new(s3: Arc<AmazonS3>, prefix: &str) -> S3Uploads {
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        S3Uploads {
            s3,
            prefix,
            http: reqwest::Client::new(),
        }
    }

    /// Every open upload whose key starts with `under` (relative to the repository).
    pub async fn list(&self, under: &str) -> Result<Vec<OpenUpload>, object_store::Error> {
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads", String::new()),
                ("prefix", format!("{}{under}", self.prefix)),
                ("max-uploads", PAGE.to_string()),
            ];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key.clone()));
                query.push(("upload-id-marker", id.clone()));
            }
            let page = self.list_page(query).await?;
            for upload in page.uploads {
                let Some(key) = upload.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                let initiated = DateTime::parse_from_rfc3339(&upload.initiated)
                    .map_err(|e| generic(format!("upload `{key}`: bad Initiated time: {e}")))?
                    .with_timezone(&Utc);
                uploads.push(OpenUpload {
                    key: key.to_string(),
                    upload_id: upload.upload_id,
                    initiated,
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (Some(true), Some(key), Some(id)) if !key.is_empty() => {
                    if markers.as_ref() == Some(&(key.clone(), id.clone())) {
                        return Err(generic("the listing of multipart uploads does not advance"));
                    }
                    markers = Some((key, id));
                }
                _ => return Ok(uploads),
            }
        }
    }

    async fn list_page(
        &self,
        query: Vec<(&str, String)>,
    ) -> Result<ListMultipartUploadsResult, object_store::Error> {
        let options = SignedUrlOptions::new().with_query(query);
        let url = self
            .s3
            .signed_url_opts(
                reqwest::Method::GET,
                &Path::from(""),
                URL_LIFETIME,
                &options,
            )
            .await?;
        // The URL carries a signature: errors are reported without it.
        let response = self
            .http
            .get(url)
            .timeout(LIST_TIMEOUT)
            .send()
            .await
            .map_err(|e| generic(format!("listing multipart uploads: {}", e.without_url())))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| generic(format!("listing multipart uploads: {}", e.without_url())))?;
        if !status.is_success() {
            let code = quick_xml::de::from_str::<ErrorBody>(&body)
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default();
            let message = format!("listing multipart uploads: HTTP {status} {code}");
            return Err(match status {
                reqwest::StatusCode::FORBIDDEN => object_store::Error::PermissionDenied {
                    path: self.prefix.clone(),
                    source: message.into(),
                },
                _ => generic(message),
            });
        }
        parse_listing(&body)
    }

    /// Aborts `upload`: its parts are deleted and the key gets no object from it.
    pub async fn abort(&self, upload: &OpenUpload) -> Result<(), object_store::Error> {
        let key = Path::from(format!("{}{}", self.prefix, upload.key));
        self.s3.abort_multipart(&key, &upload.upload_id).await
    }
}

fn generic(message: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: message.into().into(),
    }
}

fn parse_listing(body: &str) -> Result<ListMultipartUploadsResult, object_store::Error> {
    quick_xml::de::from_str(body)
        .map_err(|e| generic(format!("unreadable listing of multipart uploads: {e}")))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    /// Required, so that a body of another kind (an `<Error>`) is not read as a listing.
    #[serde(rename = "Bucket")]
    _bucket: String,
    #[serde(default)]
    is_truncated: Option<bool>,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadEntry {
    key: String,
    upload_id: String,
    initiated: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing_page_with_uploads_and_markers() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/backups/a/2/payload.age</NextKeyMarker>
  <NextUploadIdMarker>id2</NextUploadIdMarker>
  <Prefix>p/backups/</Prefix><MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/backups/a/1/payload.age</Key><UploadId>id1</UploadId>
    <Initiator><ID>x</ID><DisplayName>x</DisplayName></Initiator>
    <Owner><ID>x</ID><DisplayName>x</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-30T08:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/backups/a/2/payload.age</Key><UploadId>id2</UploadId>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-30T09:00:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_listing(body).expect("parses");
        assert_eq!(page.is_truncated, Some(true));
        assert_eq!(
            page.next_key_marker.as_deref(),
            Some("p/backups/a/2/payload.age")
        );
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id2"));
        let ids: Vec<_> = page.uploads.iter().map(|u| u.upload_id.as_str()).collect();
        assert_eq!(ids, ["id1", "id2"]);
        assert_eq!(page.uploads[0].initiated, "2026-11-30T08:00:00.000Z");
    }

    #[test]
    fn reads_an_empty_listing() {
        let body = r#"<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let page = parse_listing(body).expect("parses");
        assert!(page.uploads.is_empty());
        assert_eq!(page.is_truncated, Some(false));
    }

    #[test]
    fn an_error_page_is_not_a_listing() {
        assert!(parse_listing("<Error><Code>AccessDenied</Code></Error>").is_err());
    }
}
