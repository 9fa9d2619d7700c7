//! The reliability suite (issue 7): the real `cacd` binary against real DCMTK peers, under
//! crashes, power loss, outages, a full disk, malformed input and load. Each test runs a bounded
//! version by default; `scripts/reliability --soak` (`CACD_SOAK=1`) runs it longer.
//! RELIABILITY.md records what each test did, how often, and what was lost.

mod broken_peers;
mod crash;
mod disk_full;
mod engine;
mod hostile;
mod load;
mod malformed;
mod outage;
mod power_loss;
mod support;
