//! cacd-hal: the appliance's board I/O behind small traits.
//!
//! - [`StatusLed`]: one status LED (optionally bi-colour) showing a [`Pattern`] in a
//!   [`Colour`]; implemented over the kernel LED class ([`SysfsLed`]), GPIO character devices
//!   ([`GpioLed`]) and in memory for tests ([`SimLed`]).
//! - [`sensors`]: free disk space, memory, temperatures and whether a GPU device is present.
//!
//! Nothing here knows what the appliance is doing; `cacd` decides which pattern means what.

mod blinker;
pub mod gpio;
pub mod led;
pub mod sensors;
pub mod sim;
pub mod sysfs;

pub use gpio::{GpioLed, GpioLedConfig};
pub use led::{Colour, LedError, Pattern, StatusLed, Steps};
pub use sim::{LedEvent, SimLed, SimLedHandle};
pub use sysfs::{SysfsLed, SysfsLedConfig};
