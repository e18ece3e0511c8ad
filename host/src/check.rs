//! `ferry check`: everything `run` and `serve` would refuse, found before
//! anything runs, one line per stage (and one for `[serve]` when the file
//! has that section). The stage checks live with the runtime that builds
//! the stages ([`crate::runtime::check_stages`]), the service's with the
//! service ([`crate::serve::check`]); this module only puts them together,
//! so that neither needs the other.

use anyhow::Result;

use crate::config::Pipeline;
use crate::runtime::{self, Options};

/// One line of `ferry check`.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// The section checked: a stage's, or `serve`.
    pub section: &'static str,
    pub ok: bool,
    /// What was checked, or what is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<5} {:<10} {}", if self.ok { "ok" } else { "FAIL" }, self.section, self.message)
    }
}

/// Checks every stage, then `[serve]` if the pipeline file has one.
pub async fn check(pipeline: &Pipeline, options: &Options) -> Result<Vec<CheckLine>> {
    let line = |section, r: Result<String, String>| match r {
        Ok(message) => CheckLine { section, ok: true, message },
        Err(message) => CheckLine { section, ok: false, message },
    };
    let mut lines: Vec<CheckLine> =
        runtime::check_stages(pipeline, options).await?.into_iter().map(|(role, r)| line(role.section(), r)).collect();
    if pipeline.serve.is_some() {
        let engine = crate::stage::engine()?;
        let r = crate::serve::check(pipeline, &engine, options).await.map_err(|e| format!("{e:#}"));
        lines.push(line("serve", r));
    }
    Ok(lines)
}
