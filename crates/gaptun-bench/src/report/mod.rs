//! Rendering results: Markdown tables and PNG charts.

pub mod charts;
pub mod markdown;
pub mod targets;
