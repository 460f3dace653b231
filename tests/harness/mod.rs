
pub mod daemon;
