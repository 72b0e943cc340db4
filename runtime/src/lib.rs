//! What both binaries run besides their own work: logs and trace export
//! (`telemetry`) and the metrics/health HTTP endpoint (`http`). Neither
//! side's logic lives here, so a change to one binary's telemetry is not
//! a change to the other's code.

pub mod http;
pub mod telemetry;
