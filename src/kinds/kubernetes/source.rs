//! The kubernetes [`Source`]: discovery, then every selected resource listed page by
//! page (`limit` and `continue`), one entry per object, as served minus
//! `metadata.managedFields`, as YAML.
//!
//! Order: entries must come in key order. A list comes sorted by `namespace/name` (etcd's
//! key order), but a key ends in `.yaml`, so `a.yaml` must follow `a-b.yaml` although `a`
//! was listed first. Only an object whose name is a prefix of the next one's can be out
//! of place, so a small window holds such objects until the next name shows where they
//! go (bounded by [`MAX_WINDOW`]). A list that is not in key order at all fails that
//! resource, by name.
//!
//! A 410 Gone (the continue token expired) restarts that resource's list from the start,
//! skipping what was already taken: nothing twice, nothing listed before missed.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;

use serde_json::Value;

use super::client::{Kube, RequestError};
use super::discovery::{Resource, discover};
use super::{Filter, KubernetesJob, includes_secrets, meta, object_key};
use crate::redact::Redactor;
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::source::{Content, Source, SourceEntry, SourceError};

/// Restarts of one resource's list after a 410, before it fails.
const MAX_RESTARTS: u32 = 3;
/// Objects one resource may hold back for ordering before it fails.
pub const MAX_WINDOW: usize = 100_000;

pub struct KubernetesSource {
    job: KubernetesJob,
    redactor: Redactor,
    /// Whether the repository encrypts: Secrets go only into one that does.
    encrypted: bool,
}

impl KubernetesSource {
    pub fn new(job: &KubernetesJob, redactor: Redactor, encrypted: bool) -> KubernetesSource {
        KubernetesSource {
            job: job.clone(),
            redactor,
            encrypted,
        }
    }
}

impl Source for KubernetesSource {
    fn description(&self) -> String {
        format!(
            "kubernetes objects via {}",
            self.job.connection().describe()
        )
    }

    fn entries<'a>(
        &'a mut self,
        _previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        // An unchanged object gives the same bytes, so the same chunk: the repository
        // dedups it; there is nothing to gain from the previous run here.
        match Walk::start(&self.job, self.encrypted) {
            Ok(w) => Box::new(w),
            Err(m) => Box::new(std::iter::once(Err(SourceError::Fatal(
                self.redactor.redact(&m),
            )))),
        }
    }
}

/// The sort position of an object within its resource: `namespace/name` or `name`.
fn position(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

struct Lister {
    resource: Resource,
    prefix: String,
    continue_token: Option<String>,
    /// The greatest position received so far (a restarted list skips up to it).
    last: Option<String>,
    restarts: u32,
    done: bool,
    /// Objects held back for ordering.
    window: Reorder<SourceEntry>,
}

/// Turns objects in list order (by position, `namespace/name`) into key order (the
/// position plus `.yaml`): an object is released once the smallest key held is not
/// a prefix-position of the newest object, since no later object can then sort before
/// it. Pure, so it is tested directly.
pub struct Reorder<T> {
    held: BTreeMap<Vec<u8>, (String, T)>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            held: BTreeMap::new(),
        }
    }
}

impl<T> Reorder<T> {
    /// Adds an object (positions must come in increasing order); returns what is now
    /// certain to come first, in key order.
    pub fn push(&mut self, position: String, key: Vec<u8>, item: T) -> Vec<T> {
        let mut ready = Vec::new();
        while let Some(first) = self.held.first_entry() {
            if position.starts_with(first.get().0.as_str()) {
                break;
            }
            ready.push(first.remove().1);
        }
        self.held.insert(key, (position, item));
        ready
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The end of the list: everything held, in key order.
    pub fn finish(self) -> impl Iterator<Item = T> {
        self.held.into_values().map(|(_, t)| t)
    }
}

struct Walk {
    kube: Kube,
    filter: Filter,
    selector: String,
    page_size: u32,
    resources: VecDeque<Resource>,
    current: Option<Lister>,
    out: VecDeque<Result<SourceEntry, SourceError>>,
}

impl Walk {
    fn start(job: &KubernetesJob, encrypted: bool) -> Result<Walk, String> {
        if includes_secrets(job) && !encrypted {
            return Err("include_resources names \"secrets\", but the repository is not encrypted: Secrets go only into an encrypted repository".into());
        }
        let filter = Filter::new(job)?;
        let kube = Kube::connect(&job.connection()).map_err(|e| e.to_string())?;
        let found = discover(&kube).map_err(|e| unreachable_message(&kube, &e))?;
        let mut out = VecDeque::new();
        for (gv, e) in found.failures {
            tracing::warn!(group = %gv, error = %e, "API group not readable");
            out.push_back(Err(SourceError::Entry {
                path: EntryPath::new(format!("(api group {gv})").into_bytes()),
                message: format!("discovery of {gv} failed: {e}"),
            }));
        }
        let mut resources: Vec<(String, Resource)> = found
            .resources
            .into_iter()
            .filter(|r| (r.namespaced || job.cluster_scoped) && filter.resource(&r.qualified()))
            .map(|r| (resource_prefix(&r), r))
            .collect();
        // A resource offered in two groups' preferred versions is still one prefix each;
        // duplicates (the same group twice) are dropped.
        resources.sort_by(|a, b| a.0.cmp(&b.0));
        resources.dedup_by(|a, b| a.0 == b.0);
        tracing::info!(resources = resources.len(), server = %kube.server, "listing Kubernetes objects");
        Ok(Walk {
            kube,
            filter,
            selector: job.label_selector.clone(),
            page_size: job.page_size,
            resources: resources.into_iter().map(|(_, r)| r).collect(),
            current: None,
            out,
        })
    }

    /// Lists the next page of the current resource (or moves to the next resource),
    /// adding what is ready to `out`. Returns false when everything is done.
    fn advance(&mut self) -> bool {
        let Some(lister) = self.current.as_mut() else {
            let Some(r) = self.resources.pop_front() else {
                return false;
            };
            self.current = Some(Lister {
                prefix: resource_prefix(&r),
                resource: r,
                continue_token: None,
                last: None,
                restarts: 0,
                done: false,
                window: Reorder::default(),
            });
            return true;
        };
        if lister.done {
            let l = self.current.take().expect("current");
            self.out.extend(l.window.finish().map(Ok));
            return true;
        }
        let mut query = vec![format!("limit={}", self.page_size)];
        if let Some(t) = &lister.continue_token {
            query.push(format!("continue={}", urlencode(t)));
        }
        if !self.selector.is_empty() {
            query.push(format!("labelSelector={}", urlencode(&self.selector)));
        }
        let path = format!("{}?{}", lister.resource.list_path(), query.join("&"));
        let page: Result<Value, RequestError> = self.kube.get(&path);
        let fail = |lister: &mut Lister, message: String| -> SourceError {
            lister.done = true;
            SourceError::Entry {
                path: EntryPath::new(lister.prefix.trim_end_matches('/').as_bytes().to_vec()),
                message,
            }
        };
        let page = match page {
            Ok(p) => p,
            Err(e) if e.status == Some(410) && lister.restarts < MAX_RESTARTS => {
                // The continue token expired (compaction): list again from the start,
                // skipping what was taken.
                tracing::info!(resource = %lister.resource.qualified(), "continue token expired; listing again from the start");
                lister.restarts += 1;
                lister.continue_token = None;
                return true;
            }
            Err(e) if e.is_fatal() => {
                let message = unreachable_message(&self.kube, &e);
                let err = fail(lister, message);
                self.out.push_back(Err(match err {
                    SourceError::Entry { message, .. } => SourceError::Fatal(message),
                    other => other,
                }));
                return true;
            }
            Err(e) => {
                let q = lister.resource.qualified();
                tracing::warn!(resource = %q, error = %e, "resource not listed");
                let err = fail(lister, format!("listing {q} failed: {e}"));
                self.out.push_back(Err(err));
                return true;
            }
        };
        let items = page["items"].as_array().cloned().unwrap_or_default();
        for mut obj in items {
            let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
            let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                continue;
            };
            let ns = if lister.resource.namespaced { ns } else { None };
            let pos = position(ns.as_deref(), &name);
            if let Some(last) = &lister.last
                && pos <= *last
            {
                if lister.restarts > 0 {
                    continue; // taken before the restart
                }
                let q = lister.resource.qualified();
                let err = fail(
                    lister,
                    format!(
                        "the API server listed {q} out of key order ({pos} after {last}); not backed up"
                    ),
                );
                self.out.push_back(Err(err));
                return true;
            }
            lister.last = Some(pos.clone());
            if let Some(ns) = &ns
                && !self.filter.namespace(ns)
            {
                continue;
            }
            if lister.window.len() >= MAX_WINDOW {
                let err = fail(
                    lister,
                    format!("more than {MAX_WINDOW} objects held back for ordering"),
                );
                self.out.push_back(Err(err));
                return true;
            }
            let entry = object_entry(&lister.resource, ns.as_deref(), &name, &mut obj);
            let key = entry.entry.sort_key().to_vec();
            self.out
                .extend(lister.window.push(pos, key, entry).into_iter().map(Ok));
        }
        match page["metadata"]["continue"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            Some(t) => lister.continue_token = Some(t.to_string()),
            None => lister.done = true,
        }
        true
    }
}

impl Iterator for Walk {
    type Item = Result<SourceEntry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.out.pop_front() {
                return Some(item);
            }
            if !self.advance() {
                return None;
            }
        }
    }
}

fn resource_prefix(r: &Resource) -> String {
    let scope = if r.namespaced {
        "namespaced"
    } else {
        "cluster"
    };
    format!("{scope}/{}/", r.qualified())
}

fn unreachable_message(kube: &Kube, e: &RequestError) -> String {
    match e.status {
        Some(401) => format!(
            "the API server at {} rejected the credentials: {e}",
            kube.server
        ),
        Some(_) => format!("the API server at {} refused discovery: {e}", kube.server),
        None => e.message.clone(),
    }
}

/// The entry for one object: its YAML without `metadata.managedFields`.
fn object_entry(r: &Resource, ns: Option<&str>, name: &str, obj: &mut Value) -> SourceEntry {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    // A list's items may lack apiVersion and kind (the list carries them).
    if let Some(o) = obj.as_object_mut() {
        o.entry("apiVersion")
            .or_insert_with(|| Value::String(r.api_version()));
        o.entry("kind")
            .or_insert_with(|| Value::String(r.kind.clone()));
    }
    let yaml = serde_yaml_ng::to_string(obj)
        .unwrap_or_default()
        .into_bytes();
    let key = object_key(&r.qualified(), ns, name);
    let mut entry = Entry::with_key(key.as_bytes(), EntryKind::File);
    entry.mode = 0o644;
    entry.size = yaml.len() as u64;
    let md = &obj["metadata"];
    entry.mtime_ns = md["creationTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0);
    let m = &mut entry.meta;
    m.insert(meta::API_VERSION.into(), r.api_version());
    m.insert(meta::KIND.into(), r.kind.clone());
    m.insert(meta::RESOURCE.into(), r.qualified());
    m.insert(meta::NAME.into(), name.to_string());
    if let Some(ns) = ns {
        m.insert(meta::NAMESPACE.into(), ns.to_string());
    }
    for (k, v) in [
        (meta::RESOURCE_VERSION, "resourceVersion"),
        (meta::UID, "uid"),
    ] {
        if let Some(s) = md[v].as_str() {
            m.insert(k.into(), s.to_string());
        }
    }
    if let Some(c) = md["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"].as_bool() == Some(true))
        .and_then(|o| o["uid"].as_str())
    {
        m.insert(meta::CONTROLLER.into(), c.to_string());
    }
    SourceEntry {
        entry,
        content: Content::Read(Box::new(Cursor::new(yaml))),
    }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_come_out_in_key_order_with_a_small_window() {
        // List order (positions sorted) vs key order (position + ".yaml").
        let listed = [
            "a", "a-b", "a.x", "ab", "ac", "b", "ns/a", "ns/a-b", "ns/a0", "ns/b",
        ];
        let mut r = Reorder::default();
        let mut out = Vec::new();
        let mut most_held = 0;
        for p in listed {
            let key = format!("{p}.yaml").into_bytes();
            out.extend(r.push(p.to_string(), key.clone(), key));
            most_held = most_held.max(r.len());
        }
        out.extend(r.finish());
        let mut sorted = out.clone();
        sorted.sort();
        assert_eq!(out, sorted, "keys strictly increasing");
        assert_eq!(out.len(), listed.len());
        assert!(most_held <= 3, "held {most_held}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(urlencode("app in (a,b)"), "app%20in%20%28a%2Cb%29");
        assert_eq!(urlencode("eyJ2Ijo=+/"), "eyJ2Ijo%3D%2B%2F");
    }
}
