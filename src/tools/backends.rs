//! `backends`: what this build can decode on here, and which one `--backend
//! auto` picks.

use std::io::{self, Write};

use serde::Serialize;

use crate::backend::{self, BACKEND_NAMES, BackendInfo};
use crate::error::Error;

use super::Report;

/// One backend ecfloat knows.
#[derive(Clone, Debug, Serialize)]
pub struct BackendEntry {
    pub backend: &'static str,
    pub available: bool,
    /// Whether `--backend auto` picks it.
    pub auto: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<BackendInfo>,
    /// Why it is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every backend, in [`BACKEND_NAMES`] order.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct BackendList(pub Vec<BackendEntry>);

/// Opens every backend once to see whether it works here.
pub fn list() -> BackendList {
    let mut entries: Vec<BackendEntry> = BACKEND_NAMES
        .iter()
        .map(|&name| match backend::open(name) {
            Ok(opened) => BackendEntry {
                backend: name,
                available: true,
                auto: false,
                info: Some(opened.info()),
                reason: None,
            },
            Err(error) => BackendEntry {
                backend: name,
                available: false,
                auto: false,
                info: None,
                reason: Some(match error {
                    Error::BackendUnavailable { reason, .. } => reason,
                    other => other.to_string(),
                }),
            },
        })
        .collect();
    let pick = backend::auto_pick(
        entries
            .iter()
            .filter_map(|e| e.info.as_ref().map(|info| (e.backend, info))),
    )
    .map(str::to_string);
    for entry in &mut entries {
        entry.auto = pick.as_deref() == Some(entry.backend);
    }
    BackendList(entries)
}

impl Report for BackendList {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        for entry in &self.0 {
            let name = entry.backend;
            match (&entry.info, &entry.reason) {
                (Some(info), _) => {
                    let auto = if entry.auto {
                        "  [auto picks this]"
                    } else {
                        ""
                    };
                    writeln!(out, "{name}: {}{auto}", info.device)?;
                    writeln!(out, "    driver: {}", info.driver)?;
                    if !info.hardware_gpu && name != "cpu" {
                        writeln!(
                            out,
                            "    runs on the CPU (a software driver): auto prefers the cpu backend"
                        )?;
                    }
                    for (limit, value) in &info.limits {
                        writeln!(out, "    {limit}: {value}")?;
                    }
                }
                (None, reason) => {
                    writeln!(out, "{name}: {}", reason.as_deref().unwrap_or_default())?
                }
            }
        }
        Ok(())
    }
}
