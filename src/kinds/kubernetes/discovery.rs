//! Discovery, group by group.
//!
//! `kube`'s `Discovery::run()` fails as a whole when one group fails, and an aggregated
//! API answering 503 (metrics-server not ready) is common in a homelab. Here `/api` and
//! `/apis` must answer (else the server is unusable), and then each group's preferred
//! version is asked on its own: a failing group becomes one named failure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList, APIVersions};

use super::client::{Kube, RequestError};
use super::qualified;

/// A listable resource of the preferred version of its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    /// The plural name (`deployments`).
    pub name: String,
    pub kind: String,
    pub namespaced: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `resource.group`, or `resource` for the core group.
    pub fn qualified(&self) -> String {
        qualified(&self.name, &self.group)
    }

    /// The path that lists every object of the resource (all namespaces).
    pub fn list_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.name)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.name)
        }
    }
}

pub struct Discovered {
    pub resources: Vec<Resource>,
    /// `group/version` and why it could not be read.
    pub failures: Vec<(String, RequestError)>,
}

/// The listable resources of a resource list (no subresources such as `pods/log`).
pub fn listable(group: &str, version: &str, list: &APIResourceList) -> Vec<Resource> {
    list.resources
        .iter()
        .filter(|r| !r.name.contains('/') && r.verbs.iter().any(|v| v == "list"))
        .map(|r| Resource {
            group: group.to_string(),
            version: version.to_string(),
            name: r.name.clone(),
            kind: r.kind.clone(),
            namespaced: r.namespaced,
        })
        .collect()
}

/// Every listable resource the server offers. Fails only when `/api` or `/apis` cannot
/// be read (the server is unreachable or refuses the credentials).
pub fn discover(kube: &Kube) -> Result<Discovered, RequestError> {
    let mut out = Discovered {
        resources: Vec::new(),
        failures: Vec::new(),
    };
    let core: APIVersions = kube.get("/api")?;
    for v in &core.versions {
        match kube.get::<APIResourceList>(&format!("/api/{v}")) {
            Ok(list) => out.resources.extend(listable("", v, &list)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => out.failures.push((v.clone(), e)),
        }
    }
    let groups: APIGroupList = kube.get("/apis")?;
    for g in &groups.groups {
        let Some(version) = g
            .preferred_version
            .as_ref()
            .map(|p| p.version.clone())
            .or_else(|| g.versions.first().map(|v| v.version.clone()))
        else {
            continue;
        };
        match kube.get::<APIResourceList>(&format!("/apis/{}/{version}", g.name)) {
            Ok(list) => out.resources.extend(listable(&g.name, &version, &list)),
            Err(e) if e.status.is_none() => return Err(e),
            Err(e) => out.failures.push((format!("{}/{version}", g.name), e)),
        }
    }
    Ok(out)
}
