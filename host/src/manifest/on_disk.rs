//! What an installed capability's files say without loading it: drift that can be seen on
//! disk, and what runs it. `cjm-ctl list` and the service's capability list show both.

use std::path::Path;

use super::{CapabilityManifest, Loaded, RuntimeKind, hash};

impl Loaded<CapabilityManifest> {
    /// Drift visible without loading: the witnesses against the manifest's own code
    /// section, the component against its recorded sha256, the python env and the native
    /// program.
    pub fn drift_on_disk(&self) -> Vec<&'static str> {
        let m = &self.manifest;
        let mut flags = Vec::new();
        if m.config_schema_drifted(m.code.config_schema.as_ref()) {
            flags.push("schema-hash");
        }
        if m.structural_surface_drifted(m.code.structural_surface.as_ref()) {
            flags.push("surface-hash");
        }
        match m.runtime() {
            RuntimeKind::Wasm => {
                if let Some(w) = &m.install.wasm {
                    match hash::hash_file(&w.component_path(self.dir())) {
                        Err(_) => flags.push("component-missing"),
                        Ok(h) if h != w.sha256 => flags.push("component-changed"),
                        Ok(_) => {}
                    }
                }
            }
            RuntimeKind::Python => {
                if !Path::new(&m.install.python_path).is_file() {
                    flags.push("env-missing");
                }
            }
            RuntimeKind::Native => {
                if let Some(n) = &m.install.native
                    && n.program(self.dir()).is_none()
                {
                    flags.push("program-missing");
                }
            }
        }
        flags
    }

    /// What runs it: the python env, the component file or the native command.
    pub fn runs(&self) -> String {
        let m = &self.manifest;
        match m.runtime() {
            RuntimeKind::Python => m.install.python_path.clone(),
            RuntimeKind::Wasm => m
                .install
                .wasm
                .as_ref()
                .map_or_else(String::new, |w| normalize(&w.component_path(self.dir()))),
            RuntimeKind::Native => m
                .install
                .native
                .as_ref()
                .map_or_else(String::new, |n| n.command.join(" ")),
        }
    }
}

/// `a/manifests/../components/x.wasm` -> `a/components/x.wasm`, lexically.
fn normalize(p: &Path) -> String {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.display().to_string()
}
