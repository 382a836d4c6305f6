//! A worker's environment: the manifest's `worker_env` contract resolved from the secret
//! store, the instance's persisted overrides and the defaults (every secret of the capability
//! when it declares no contract); setting secrets and
//! overrides (each respawns the workers it concerns).

use super::*;

impl CapabilityManager {
    /// Resolves the manifest's `worker_env` (cjm-substrate's order: manifest default <
    /// the instance's persisted override < secret): secrets from the secret store (keyed by
    /// capability name, shared by all its instances), visible variables from `overrides`
    /// (set by [`set_worker_env`](Self::set_worker_env)) or their defaults with `${...}`
    /// templates expanded; a required variable with none is an error naming it. Each entry
    /// says whether it is a secret (its value is then masked in what the host records).
    pub(super) fn worker_env(
        &self,
        m: &CapabilityManifest,
        overrides: &BTreeMap<String, String>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String, bool)>> {
        let name = &m.code.name;
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for spec in m.code.worker_env.iter().flatten() {
            let value = if spec.secret {
                self.inner
                    .stores
                    .secrets
                    .get(name, &spec.name, None)?
                    .map(|s| s.expose().to_owned())
            } else if let Some(v) = overrides.get(&spec.name) {
                Some(v.clone())
            } else {
                spec.default
                    .as_deref()
                    .and_then(|d| manifest::runtime::expand_placeholders(d, lookup))
            };
            match value {
                Some(v) => out.push((spec.name.clone(), v, spec.secret)),
                None if spec.required => missing.push(spec.name.clone()),
                None => {}
            }
        }
        // A manifest that declares no `worker_env` (a native worker installed from a
        // capabilities.yaml) gets every secret set for its capability.
        if m.code.worker_env.as_ref().is_none_or(Vec::is_empty) {
            let secrets = &self.inner.stores.secrets;
            for key in secrets.list_keys(name, None)? {
                if let Some(value) = secrets.get(name, &key, None)? {
                    out.push((key, value.expose().to_owned(), true));
                }
            }
        }
        if !missing.is_empty() {
            return Err(Error::job(
                JobError::user_input(format!(
                    "capability '{name}' misses required environment: {}",
                    missing.join(", ")
                ))
                .with_fields(missing),
            ));
        }
        Ok(out)
    }

    /// Persists instance `id`'s overrides of its capability's visible `worker_env` variables
    /// (replacing earlier ones; an empty map clears them) and reloads the instance when it
    /// is loaded, since worker environments are fixed at spawn. A name the capability does
    /// not declare, or one it declares secret (secrets come only from the secret store), is
    /// refused naming it. Overrides may be staged before the instance is first loaded
    /// (for an id of the capability's own: its name, or `<name>-<suffix>`).
    pub async fn set_worker_env(
        &self,
        id: &str,
        overrides: BTreeMap<String, String>,
    ) -> Result<()> {
        let name = match self.instance(id) {
            Ok(i) => i.name.clone(),
            Err(_) => {
                let names = self.capabilities();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                instance_owner(id, &names)
                    .ok_or_else(|| {
                        user(format!("'{id}' is no instance of an installed capability"))
                    })?
                    .to_owned()
            }
        };
        let loaded = self.manifest(&name)?;
        let specs = loaded.manifest.code.worker_env.clone().unwrap_or_default();
        for key in overrides.keys() {
            let why = match specs.iter().find(|s| &s.name == key) {
                None => "is not in its worker_env contract",
                Some(s) if s.secret => "is a secret: set it with `cjm-ctl set-secret`",
                Some(_) => continue,
            };
            return Err(Error::job(
                JobError::user_input(format!("capability '{name}': variable '{key}' {why}"))
                    .with_fields([key.clone()]),
            ));
        }
        let mut record = self.inner.stores.configs.get(id)?.unwrap_or_default();
        record.worker_env = overrides;
        self.inner.stores.configs.set(id, &record)?;
        if self.instance(id).is_ok() {
            self.reload(id).await?;
        }
        Ok(())
    }

    /// Stores a secret for capability `name` (shared by all its instances) and reloads its
    /// loaded instances, since worker environments are fixed at spawn. The value never
    /// reaches the journal or an error message.
    pub async fn set_secret(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let refuse = |field: &str, why: String| {
            Err(Error::job(JobError::user_input(why).with_fields([field])))
        };
        // It becomes an environment variable: a name the environment can carry.
        let named = key.len() <= 128
            && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !named {
            return refuse(
                "key",
                format!(
                    "'{key}' is not a variable name (letters, digits and '_', not starting with a digit)"
                ),
            );
        }
        if value.is_empty() {
            return refuse("value", "the secret's value is empty".to_owned());
        }
        if value.contains('\0') {
            return refuse(
                "value",
                "the secret's value holds a NUL byte, which an environment variable cannot carry"
                    .to_owned(),
            );
        }
        let loaded = self.manifest(name)?;
        // A wasm guest sees only the secrets its sandbox grants: one that would never reach
        // it is refused rather than stored for nothing.
        if let Some(wasm) = &loaded.manifest.install.wasm
            && !wasm.sandbox.secrets.iter().any(|s| s == key)
        {
            return Err(Error::job(
                JobError::user_input(format!(
                    "capability '{name}' is a wasm component and its sandbox grants no secret '{key}': add `secrets: [{key}]` to its sandbox block (capabilities.yaml or the manifest's install.wasm.sandbox) and reinstall"
                ))
                .with_fields(["key"]),
            ));
        }
        // A worker's environment holds the secrets its manifest's `worker_env` declares (all
        // of them when it declares none): one a declared contract leaves out would never
        // reach it.
        let declared = loaded
            .manifest
            .code
            .worker_env
            .as_deref()
            .unwrap_or_default();
        if loaded.manifest.install.wasm.is_none()
            && !declared.is_empty()
            && !declared.iter().any(|spec| spec.secret && spec.name == key)
        {
            return refuse(
                "key",
                format!(
                    "capability '{name}' declares no secret '{key}' in its worker_env, so its worker would never see it: declare it (`worker_env: [{{name: {key}, secret: true}}]` in capabilities.yaml, or the manifest's code.worker_env) and reinstall"
                ),
            );
        }
        self.inner
            .stores
            .secrets
            .set(name, key, crate::store::SecretValue::new(value), None)?;
        let ids: Vec<String> = self
            .instances()
            .iter()
            .filter(|i| i.name == name)
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            self.reload(&id).await?;
        }
        Ok(())
    }
}
