//! From a Pod's spec to what a process needs: its volumes as local directories, its
//! environment, its binary and arguments.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod, Secret,
};
use kube::{Api, Client};

use super::rewrite::{self, Mount};

/// Why a container cannot start (yet): becomes `state.waiting` on the Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Everything that comes from the Pod's volumes: the local directory of each volume.
pub struct Volumes {
    pub dirs: HashMap<String, PathBuf>,
}

/// The value of a `fieldRef` as the kubelet resolves it.
pub fn field_value(pod: &Pod, selector: &ObjectFieldSelector, pod_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = selector.field_path.as_str();
    let from_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    let all = |map: &Option<BTreeMap<String, String>>| -> String {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(all(&meta.labels)),
        "metadata.annotations" => Some(all(&meta.annotations)),
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_owned()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".to_owned()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        _ => from_map(&meta.labels, "metadata.labels")
            .or_else(|| from_map(&meta.annotations, "metadata.annotations")),
    }
}

fn write_file(dir: &Path, rel: &str, bytes: &[u8], mode: Option<i32>) -> Result<(), Waiting> {
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return Err(Waiting::new(
            "CreateContainerConfigError",
            format!("volume item path {rel:?} leaves the volume"),
        ));
    }
    let path = dir.join(rel);
    let io = |e: std::io::Error| {
        Waiting::new(
            "CreateContainerConfigError",
            format!("writing {}: {e}", path.display()),
        )
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, bytes).map_err(io)?;
    let mode = mode.unwrap_or(0o644) as u32 & 0o777;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(())
}

/// `key → path` for a ConfigMap or Secret source: all keys, or the listed `items`.
fn selected<'a>(
    keys: impl Iterator<Item = &'a String>,
    items: &'a Option<Vec<KeyToPath>>,
    what: &str,
) -> Result<Vec<(String, String, Option<i32>)>, Waiting> {
    match items {
        None => Ok(keys.map(|k| (k.clone(), k.clone(), None)).collect()),
        Some(items) => {
            let present: Vec<&String> = keys.collect();
            items
                .iter()
                .map(|i| {
                    if present.contains(&&i.key) {
                        Ok((i.key.clone(), i.path.clone(), i.mode))
                    } else {
                        Err(Waiting::new(
                            "CreateContainerConfigError",
                            format!("{what} has no key {:?}", i.key),
                        ))
                    }
                })
                .collect()
        }
    }
}

/// Fetches what the volumes and env refer to; one instance per container start.
pub struct Sources<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
}

impl Sources<'_> {
    async fn config_map(&self, name: &str, optional: bool) -> Result<Option<ConfigMap>, Waiting> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), self.namespace);
        match api.get_opt(name).await {
            Ok(Some(cm)) => Ok(Some(cm)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(Waiting::new(
                "CreateContainerConfigError",
                format!("configmap {:?} not found", name),
            )),
            Err(e) => Err(Waiting::new(
                "ContainerCreating",
                format!("reading configmap {name:?}: {e}"),
            )),
        }
    }

    async fn secret(&self, name: &str, optional: bool) -> Result<Option<Secret>, Waiting> {
        let api = Api::<Secret>::namespaced(self.client.clone(), self.namespace);
        match api.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(s)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(Waiting::new(
                "CreateContainerConfigError",
                format!("secret {:?} not found", name),
            )),
            Err(e) => Err(Waiting::new(
                "ContainerCreating",
                format!("reading secret {name:?}: {e}"),
            )),
        }
    }

    /// Writes a ConfigMap's keys into `dir`, text rewritten for the local paths and IP.
    async fn write_config_map(
        &self,
        dir: &Path,
        name: &str,
        items: &Option<Vec<KeyToPath>>,
        optional: bool,
        mode: Option<i32>,
        rewrite: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<(), Waiting> {
        let Some(cm) = self.config_map(name, optional).await? else {
            return Ok(());
        };
        let data = cm.data.unwrap_or_default();
        let binary = cm.binary_data.unwrap_or_default();
        let what = format!("configmap {name:?}");
        for (key, path, item_mode) in selected(data.keys().chain(binary.keys()), items, &what)? {
            let bytes = match data.get(&key) {
                Some(text) => rewrite(text).into_bytes(),
                None => binary[&key].0.clone(),
            };
            write_file(dir, &path, &bytes, item_mode.or(mode))?;
        }
        Ok(())
    }

    async fn write_secret(
        &self,
        dir: &Path,
        name: &str,
        items: &Option<Vec<KeyToPath>>,
        optional: bool,
        mode: Option<i32>,
    ) -> Result<(), Waiting> {
        let Some(secret) = self.secret(name, optional).await? else {
            return Ok(());
        };
        let data = secret.data.unwrap_or_default();
        let what = format!("secret {name:?}");
        for (key, path, item_mode) in selected(data.keys(), items, &what)? {
            write_file(dir, &path, &data[&key].0, item_mode.or(mode))?;
        }
        Ok(())
    }
}

fn write_downward(
    dir: &Path,
    pod: &Pod,
    pod_ip: &str,
    items: &Option<Vec<DownwardAPIVolumeFile>>,
    mode: Option<i32>,
) -> Result<(), Waiting> {
    for item in items.iter().flatten() {
        let Some(field) = &item.field_ref else {
            continue; // resourceFieldRef: the runner sets no resource limits
        };
        let value = field_value(pod, field, pod_ip).unwrap_or_default();
        write_file(dir, &item.path, value.as_bytes(), item.mode.or(mode))?;
    }
    Ok(())
}

/// The container mounts of every container, as container path → local path.
pub fn mounts(pod: &Pod, volumes: &Volumes) -> Vec<Mount> {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let mut all = Vec::new();
    for c in containers {
        all.extend(container_mounts(c, volumes));
    }
    rewrite::normalise_mounts(all)
}

fn container_mounts(container: &Container, volumes: &Volumes) -> Vec<Mount> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|vm| {
            let mut local = volumes.dirs.get(&vm.name)?.clone();
            if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                local = local.join(sub);
            }
            Some(Mount {
                container_path: vm.mount_path.clone(),
                local_path: local.to_string_lossy().into_owned(),
            })
        })
        .collect()
}

/// Materialises the Pod's volumes under `<pod_dir>/volumes/<name>`; PVCs under
/// `<run_dir>/pvcs/<namespace>_<claim>` so they outlive the Pod. ConfigMap, Secret and
/// downward API volumes are written afresh; emptyDirs keep their contents for the Pod's life.
pub async fn materialise(
    sources: &Sources<'_>,
    pod: &Pod,
    pod_dir: &Path,
    run_dir: &Path,
    pod_ip: &str,
) -> Result<Volumes, Waiting> {
    let spec_volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let io = |path: &Path, e: std::io::Error| {
        Waiting::new(
            "ContainerCreating",
            format!("preparing {}: {e}", path.display()),
        )
    };
    // First the directories, so that mount paths are known for rewriting ConfigMap text.
    let mut dirs = HashMap::new();
    for v in &spec_volumes {
        let dir = match &v.persistent_volume_claim {
            Some(pvc) => run_dir
                .join("pvcs")
                .join(format!("{}_{}", sources.namespace, pvc.claim_name)),
            None => pod_dir.join("volumes").join(&v.name),
        };
        dirs.insert(v.name.clone(), dir);
    }
    let volumes = Volumes { dirs };
    let mounts = mounts(pod, &volumes);
    let rewrite_text = |text: &str| rewrite::rewrite(text, &mounts, pod_ip);

    for v in &spec_volumes {
        let dir = &volumes.dirs[&v.name];
        let fresh = v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some();
        if fresh && dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        if let Some(cm) = &v.config_map {
            let optional = cm.optional.unwrap_or(false);
            sources
                .write_config_map(
                    dir,
                    &cm.name,
                    &cm.items,
                    optional,
                    cm.default_mode,
                    &rewrite_text,
                )
                .await?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            sources
                .write_secret(dir, &name, &s.items, optional, s.default_mode)
                .await?;
        } else if let Some(d) = &v.downward_api {
            write_downward(dir, pod, pod_ip, &d.items, d.default_mode)?;
        } else if let Some(p) = &v.projected {
            for source in p.sources.iter().flatten() {
                if let Some(cm) = &source.config_map {
                    let optional = cm.optional.unwrap_or(false);
                    sources
                        .write_config_map(
                            dir,
                            &cm.name,
                            &cm.items,
                            optional,
                            p.default_mode,
                            &rewrite_text,
                        )
                        .await?;
                }
                if let Some(s) = &source.secret {
                    let optional = s.optional.unwrap_or(false);
                    sources
                        .write_secret(dir, &s.name, &s.items, optional, p.default_mode)
                        .await?;
                }
                if let Some(d) = &source.downward_api {
                    write_downward(dir, pod, pod_ip, &d.items, p.default_mode)?;
                }
                // serviceAccountToken and clusterTrustBundle sources are not written.
            }
        }
    }
    Ok(volumes)
}

/// What to spawn for one container.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Resolves the binary (`command[0]`'s basename in `bin_dir`), the environment and the
/// arguments, with `$(VAR)` expansion and the path and bind rewrites applied.
pub async fn launch(
    sources: &Sources<'_>,
    pod: &Pod,
    container: &Container,
    volumes: &Volumes,
    bin_dir: &Path,
    pod_ip: &str,
) -> Result<Launch, Waiting> {
    let command = container.command.clone().unwrap_or_default();
    let Some(first) = command.first() else {
        return Err(Waiting::new(
            "NoCommand",
            "pod-runner runs container.command[0] from its --bin-dir; this container has no command (image entrypoints are not known)",
        ));
    };
    let base = Path::new(first)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let binary = bin_dir.join(&base);
    if base.is_empty() || !binary.is_file() {
        return Err(Waiting::new(
            "BinaryNotFound",
            format!(
                "no binary {base:?} (from command[0] {first:?}) in {}; build it with cargo",
                bin_dir.display()
            ),
        ));
    }

    let mounts = rewrite::normalise_mounts(container_mounts(container, volumes));
    let rewrite_value = |s: &str| rewrite::rewrite(s, &mounts, pod_ip);

    // envFrom first, then env; a later definition wins, as in the kubelet.
    let mut env: Vec<(String, String)> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set = |env: &mut Vec<(String, String)>,
               vars: &mut HashMap<String, String>,
               k: String,
               v: String| {
        env.retain(|(name, _)| *name != k);
        vars.insert(k.clone(), v.clone());
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            if let Some(cm) = sources
                .config_map(&r.name, r.optional.unwrap_or(false))
                .await?
            {
                for (k, v) in cm.data.unwrap_or_default() {
                    set(
                        &mut env,
                        &mut vars,
                        format!("{prefix}{k}"),
                        rewrite_value(&v),
                    );
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            if let Some(s) = sources.secret(&r.name, r.optional.unwrap_or(false)).await? {
                for (k, v) in s.data.unwrap_or_default() {
                    let v = String::from_utf8_lossy(&v.0).into_owned();
                    set(&mut env, &mut vars, format!("{prefix}{k}"), v);
                }
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            rewrite_value(&rewrite::expand_vars(v, &vars))
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(pod, f, pod_ip).ok_or_else(|| {
                    Waiting::new(
                        "CreateContainerConfigError",
                        format!("env {}: unsupported fieldRef {:?}", e.name, f.field_path),
                    )
                })?
            } else if let Some(k) = &from.secret_key_ref {
                let optional = k.optional.unwrap_or(false);
                let secret = sources.secret(&k.name, optional).await?;
                match secret.and_then(|s| s.data?.remove(&k.key)) {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(Waiting::new(
                            "CreateContainerConfigError",
                            format!("env {}: secret {:?} has no key {:?}", e.name, k.name, k.key),
                        ));
                    }
                }
            } else if let Some(k) = &from.config_map_key_ref {
                let optional = k.optional.unwrap_or(false);
                let cm = sources.config_map(&k.name, optional).await?;
                match cm.and_then(|c| c.data?.remove(&k.key)) {
                    Some(v) => rewrite_value(&v),
                    None if optional => continue,
                    None => {
                        return Err(Waiting::new(
                            "CreateContainerConfigError",
                            format!(
                                "env {}: configmap {:?} has no key {:?}",
                                e.name, k.name, k.key
                            ),
                        ));
                    }
                }
            } else {
                continue; // resourceFieldRef, fileKeyRef: not supported
            }
        } else {
            String::new()
        };
        set(&mut env, &mut vars, e.name.clone(), value);
    }

    let args = command[1..]
        .iter()
        .chain(container.args.iter().flatten())
        .map(|a| rewrite_value(&rewrite::expand_vars(a, &vars)))
        .collect();
    Ok(Launch { binary, args, env })
}
