//! # ferry host
//!
//! ferry moves clinic imaging (first: Dentsply Sirona Sidexis 4) to a
//! destination filed by the practice system's patient guid. The host runs a
//! pipeline declared in TOML whose four stages are WebAssembly components:
//!
//! ```text
//! source ──▶ extractor ──▶ resolver ──▶ store
//! ```
//!
//! Why components: clinics and integrators add a new imaging source or PMS
//! by dropping in a `.wasm`, never by recompiling ferry, and a plugin gets
//! exactly the authority its pipeline section grants (see [`caps`]).
//!
//! Module map:
//! - [`config`]: the pipeline file (parsing and validation only);
//! - [`plugin`]: loading, componentising, compile cache, world checks;
//! - [`caps`]: the capabilities plugins import, each checked against grants;
//! - [`stage`]: instance pools under memory and time limits;
//! - [`runner`]: the topology of queues and workers, outcomes, summary;
//! - [`runtime`]: wiring it all together, and `ferry check`.

pub mod bindings;
pub mod caps;
pub mod check;
pub mod config;
pub mod ledger;
pub mod outcome;
pub mod pace;
pub mod plugin;
pub mod retry;
pub mod runner;
pub mod runtime;
pub mod seal;
pub mod serve;
pub mod stage;
pub mod units;
pub mod util;
