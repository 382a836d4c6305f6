//! The environment tools of a Python install: which one makes an entry's environment (uv,
//! venv + pip, a conda-like manager), where its binaries and interpreters are, and running
//! it to create the environment and install packages into it.

use super::*;

/// How an environment is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvTool {
    /// `uv venv` + `uv pip install` (this `uv` binary).
    Uv(PathBuf),
    /// `python -m venv` + pip.
    Venv,
    /// A conda-like binary making prefix environments.
    Conda {
        /// The binary.
        binary: PathBuf,
        /// micromamba's `create -f` differs from conda's `env create -f`.
        micromamba: bool,
    },
}

pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}

/// The env manager the configuration sets explicitly, if any (the built-in default, conda,
/// does not count: cjm-substrate's default is not this host's).
pub(super) fn configured_manager(config: &HostConfig) -> Option<EnvManager> {
    let set = |raw: &RawConfig| {
        raw.runtime
            .as_ref()
            .is_some_and(|r| r.env_manager.is_some() || r.conda_type.is_some())
    };
    let env = RawConfig::from_env().ok();
    let yaml = config
        .config_file
        .as_ref()
        .and_then(|f| RawConfig::from_yaml_file(f).ok());
    (env.as_ref().is_some_and(set) || yaml.as_ref().is_some_and(set))
        .then_some(config.python.env_manager)
}

pub(super) fn conda_binary(config: &HostConfig, manager: EnvManager) -> Option<PathBuf> {
    config
        .python
        .conda_binary()
        .filter(|p| p.is_file())
        .or_else(|| match manager {
            EnvManager::Micromamba => on_path("micromamba"),
            _ => on_path("conda")
                .or_else(|| on_path("mamba"))
                .or_else(|| on_path("micromamba")),
        })
}

/// The `uv` installs use: on `PATH`, else the one `install-all --install-uv` put in the data
/// dir.
pub fn uv_binary(config: &HostConfig) -> Option<PathBuf> {
    on_path("uv").or_else(|| {
        let own = tool_uv_path(config);
        own.is_file().then_some(own)
    })
}

/// Where `install-all --install-uv` puts uv: `<data dir>/tools/uv/bin/uv`.
pub fn tool_uv_path(config: &HostConfig) -> PathBuf {
    config.data_dir.join("tools/uv/bin/uv")
}

/// Installs uv from PyPI into an environment of its own in the data dir (`tools/uv`), for
/// Python installs to use from then on; a failed attempt leaves nothing behind.
pub(crate) async fn install_uv(config: &HostConfig, log: &Log) -> Result<PathBuf> {
    let dir = config.data_dir.join("tools/uv");
    let python = find_python(None)?;
    let result = async {
        super::super::run(
            log,
            "creating the uv tool environment",
            tokio::process::Command::new(python)
                .args(["-m", "venv"])
                .arg(&dir),
        )
        .await?;
        super::super::run(
            log,
            "installing uv from PyPI",
            tokio::process::Command::new(env_python(&dir)).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "uv",
            ]),
        )
        .await?;
        let uv = tool_uv_path(config);
        if uv.is_file() {
            Ok(uv)
        } else {
            Err(InstallError::InstallFailed(format!(
                "pip installed uv but {} is missing",
                uv.display()
            )))
        }
    }
    .await;
    if result.is_err() {
        discard_env(&dir, log);
    }
    result
}

/// Chooses the env manager of an entry (see the module docs).
pub fn choose_tool(config: &HostConfig, src: &PythonSource) -> Result<EnvTool> {
    let conda = |m: EnvManager| -> Result<EnvTool> {
        let binary = conda_binary(config, m).ok_or_else(|| InstallError::ToolMissing {
            tool: m.as_str().to_owned(),
            hint: "install it or set runtime.binaries in cjm.yaml (or use env_manager: uv / venv)"
                .into(),
        })?;
        let micromamba = binary
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("micromamba"));
        Ok(EnvTool::Conda { binary, micromamba })
    };
    match src.env_manager {
        Some(EnvManager::Uv) => {
            return uv_binary(config)
                .map(EnvTool::Uv)
                .ok_or_else(|| InstallError::ToolMissing {
                    tool: "uv".into(),
                    hint: "`cjm-ctl install-all --install-uv` puts it in the data dir once (or `pip install uv`), or use env_manager: venv".into(),
                });
        }
        Some(EnvManager::Venv) => return Ok(EnvTool::Venv),
        Some(m) => return conda(m),
        None => {}
    }
    if src.env_file.is_some() {
        let m = configured_manager(config)
            .filter(|m| m.is_conda_like())
            .unwrap_or(EnvManager::Conda);
        return conda(m);
    }
    match configured_manager(config) {
        Some(m) if m.is_conda_like() && conda_binary(config, m).is_some() => return conda(m),
        Some(EnvManager::Venv) => return Ok(EnvTool::Venv),
        _ => {}
    }
    Ok(uv_binary(config).map_or(EnvTool::Venv, EnvTool::Uv))
}

/// A Python interpreter for `version` (`3.12`) or a path; `python3` when none is asked for.
/// pyenv shims are tried last (they exist for versions that are not selected and fail).
pub(super) fn find_python(version: Option<&str>) -> Result<PathBuf> {
    let Some(v) = version else {
        return on_path("python3").ok_or_else(|| InstallError::ToolMissing {
            tool: "python3".into(),
            hint: "install Python 3 or give `python_version:` in the entry".into(),
        });
    };
    if v.contains('/') {
        let p = PathBuf::from(v);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(InstallError::InstallFailed(format!(
                "python {v} does not exist"
            )))
        };
    }
    let name = format!("python{v}");
    let dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    let mut candidates: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| !d.to_string_lossy().contains("shims"))
        .map(|d| d.join(&name))
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        let versions = Path::new(&home).join(".pyenv/versions");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&versions)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n == v || n.starts_with(&format!("{v}."))
            })
            .map(|e| e.path().join("bin/python3"))
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    candidates.extend(dirs.iter().map(|d| d.join(&name)));
    candidates
        .into_iter()
        .filter(|p| p.is_file())
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| InstallError::ToolMissing {
            tool: name,
            hint: format!("install Python {v} (or install uv, which fetches it)"),
        })
}

/// A local interpreter of a Python that cjm-substrate supports (it requires >= 3.12), the
/// oldest first, for an entry that names none: cjm packages then install without
/// `--ignore-requires-python`. `None` when there is none here (the default `python3` is used,
/// with a warning).
pub(super) fn supported_python() -> Option<PathBuf> {
    ["3.12", "3.13", "3.14"]
        .into_iter()
        .find_map(|v| find_python(Some(v)).ok())
}

/// The interpreter of an env dir.
pub(super) fn env_python(dir: &Path) -> PathBuf {
    dir.join("bin").join("python")
}

/// A pip spec as arguments (`-e path` is two).
pub(super) fn spec_args(spec: &str) -> Vec<String> {
    spec.split_whitespace().map(str::to_owned).collect()
}

pub(super) async fn python_version(python: &Path, log: &Log) -> Result<(u32, u32)> {
    let out = super::super::output(
        log,
        "reading the environment's python version",
        tokio::process::Command::new(python)
            .args(["-c", "import sys; print('%d %d' % sys.version_info[:2])"]),
    )
    .await?;
    let mut it = out.split_whitespace().filter_map(|n| n.parse().ok());
    Ok((it.next().unwrap_or(3), it.next().unwrap_or(0)))
}

pub(super) fn tool_name(tool: &EnvTool) -> &'static str {
    match tool {
        EnvTool::Uv(_) => "uv",
        EnvTool::Venv => "venv",
        EnvTool::Conda {
            micromamba: true, ..
        } => "micromamba",
        EnvTool::Conda { .. } => "conda",
    }
}

pub(super) async fn create_env(
    tool: &EnvTool,
    src: &PythonSource,
    dir: &Path,
    log: &Log,
) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| crate::Error::io(parent, e))?;
    }
    let step = "creating the environment";
    match tool {
        EnvTool::Uv(uv) => {
            let mut cmd = tokio::process::Command::new(uv);
            // `--seed` puts pip in the env: used for pythons older than cjm-substrate's
            // declared 3.12 (see `pip_install`).
            cmd.args(["venv", "--seed"]);
            // A local interpreter when there is one (uv does not see pyenv's versions and
            // would download one); else the version, for uv to find or fetch.
            match &src.python {
                Some(v) => {
                    match find_python(Some(v)) {
                        Ok(p) => cmd.arg("--python").arg(p),
                        Err(_) => cmd.arg("--python").arg(v),
                    };
                }
                None => {
                    if let Some(p) = supported_python() {
                        cmd.arg("--python").arg(p);
                    }
                }
            }
            super::super::run(log, step, cmd.arg(dir)).await
        }
        EnvTool::Venv => {
            let python = interpreter_for(src)?;
            super::super::run(
                log,
                step,
                tokio::process::Command::new(python)
                    .args(["-m", "venv"])
                    .arg(dir),
            )
            .await
        }
        EnvTool::Conda { binary, micromamba } => {
            let mut cmd = tokio::process::Command::new(binary);
            match (&src.env_file, micromamba) {
                (Some(file), true) => {
                    cmd.arg("create").arg("-f").arg(file);
                }
                (Some(file), false) => {
                    cmd.args(["env", "create", "-f"]).arg(file);
                }
                (None, _) => {
                    cmd.arg("create").arg(format!(
                        "python={}",
                        src.python.as_deref().unwrap_or("3.12")
                    ));
                }
            }
            cmd.arg("-p").arg(dir);
            if src.env_file.is_none() || *micromamba {
                cmd.arg("-y");
            }
            super::super::run(log, step, &mut cmd).await
        }
    }
}

pub(super) async fn pip_install(
    tool: &EnvTool,
    python: &Path,
    specs: &[String],
    log: &Log,
) -> Result<()> {
    let step = "installing the packages";
    let args: Vec<String> = specs.iter().flat_map(|s| spec_args(s)).collect();
    // cjm-substrate declares Python >= 3.12 but runs on 3.11: pip installs it with
    // `--ignore-requires-python`. uv has no such switch and resolves for the env's python,
    // so uv is used only where the declared requirement holds.
    let version = python_version(python, log).await?;
    if version < (3, 12) {
        log.warn(&format!(
            "cjm-substrate requires Python >= 3.12 and this environment's Python is {}.{}: \
             installed with --ignore-requires-python (install Python 3.12, or name one with \
             `python_version:` in the entry)",
            version.0, version.1
        ));
    }
    if let EnvTool::Uv(uv) = tool
        && version >= (3, 12)
    {
        return super::super::run(
            log,
            step,
            tokio::process::Command::new(uv)
                .args(["pip", "install", "--python"])
                .arg(python)
                .args(&args),
        )
        .await;
    }
    let mut cmd = tokio::process::Command::new(python);
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check"]);
    if version < (3, 12) {
        cmd.arg("--ignore-requires-python");
    }
    super::super::run(log, step, cmd.args(&args)).await
}
