//! cacd: coronary artery calcium scoring for low-dose chest CT.
//!
//! Data flows one way through named stages, one module each:
//! receive → store → assemble → preprocess → infer → refine → score → encode → forward.
//! The compute stages (`assemble` onwards to `encode`) are pure functions over the plain
//! types in [`volume`]; the daemon only wires stages to the queue.

pub mod assemble;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dimse;
pub mod encode;
pub mod forward;
pub mod fsutil;
pub mod gate;
#[cfg(feature = "cuda-base")]
pub mod gpu;
pub mod health;
pub mod heart;
pub mod housekeeping;
pub mod infer;
pub mod lengths;
pub mod phantom;
pub mod pipeline;
pub mod preprocess;
pub mod queue;
pub mod receive;
pub mod refine;
pub mod reports;
pub mod result;
pub mod score;
pub mod status;
pub mod store;
pub mod train_data;
pub mod uid;
pub mod volume;
pub mod worker;
