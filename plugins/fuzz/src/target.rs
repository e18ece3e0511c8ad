//! The code under test: ferry's parsers of untrusted DICOM bytes.
use std::io::Cursor;

/// A function the harness feeds inputs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `dicom_meta::extract_from`: the extractor stage's header parse.
    Extract,
    /// `dicom_preview::render` at 256 px with the default limits: the
    /// renderer stage behind `GET …/preview`.
    Render,
}

impl Target {
    pub const ALL: &'static [Target] = &[Target::Extract, Target::Render];

    pub fn name(self) -> &'static str {
        match self {
            Target::Extract => "extract",
            Target::Render => "render",
        }
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// Runs the target on one input: `Ok` if it accepted the bytes, `Err`
    /// with its message if it refused them (the expected answer to most
    /// fuzz inputs). Panics and over-budget allocations are the harness's
    /// business.
    pub fn run(self, bytes: &[u8]) -> Result<(), String> {
        match self {
            Target::Extract => dicom_meta::extract_from(Cursor::new(bytes)).map(|_| ()).map_err(|e| format!("{e:?}")),
            Target::Render => {
                let limits = dicom_preview::RenderLimits::default();
                dicom_preview::render(Cursor::new(bytes), Some(256), &limits).map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }
}
