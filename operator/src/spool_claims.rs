//! The receivers' spool claims after their replicas: a claim whose replica was scaled away
//! (or whose WebhookIngress is being deleted) still holds what that replica acknowledged,
//! so a Job drains it into Kafka and the claim is deleted only once the Job found it empty.
//!
//! `decide` is the pure part; `SpoolClaims::read` gathers its inputs and `apply` carries out
//! what it decided. No claim is ever deleted except after its drain Job succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bridge_api::WebhookIngress;
use bridge_api::webhook_ingress::SpoolStatus;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::{Api, Client, ResourceExt};

use crate::ingress_plan::{
    self, ADMIN_PORT, COMPONENT, DRAIN_COMPONENT, drain_job_name, ordinal_after,
    spool_claim_ordinal,
};
use crate::workload;

/// Where a drain Job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// What one pass does with the claims, by replica ordinal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    /// A replica wanted now has it.
    pub serving: Vec<u32>,
    /// Its replica is gone from the spec but its Pod still stops (draining on SIGTERM).
    pub stopping: Vec<u32>,
    /// No replica has it: a drain Job is to be created.
    pub start_drain: Vec<u32>,
    pub draining: Vec<u32>,
    /// The drain Job found it empty: the claim goes, then the Job.
    pub drained: Vec<u32>,
    /// The drain Job gave up: the claim is kept for a person to look at.
    pub failed: Vec<u32>,
    /// Jobs no longer wanted: their replica is back, or their claim is gone.
    pub stale_jobs: Vec<u32>,
}

/// Decides for each claim; `replicas` is 0 while the WebhookIngress is being deleted.
pub fn decide(
    replicas: u32,
    claims: &BTreeSet<u32>,
    replica_pods: &BTreeSet<u32>,
    jobs: &BTreeMap<u32, JobState>,
) -> Decisions {
    let mut decisions = Decisions::default();
    for &ordinal in claims {
        let list = if ordinal < replicas {
            &mut decisions.serving
        } else if replica_pods.contains(&ordinal) {
            &mut decisions.stopping
        } else {
            match jobs.get(&ordinal) {
                None => &mut decisions.start_drain,
                Some(JobState::Running) => &mut decisions.draining,
                Some(JobState::Succeeded) => &mut decisions.drained,
                Some(JobState::Failed) => &mut decisions.failed,
            }
        };
        list.push(ordinal);
    }
    decisions.stale_jobs = jobs
        .keys()
        .copied()
        .filter(|ordinal| *ordinal < replicas || !claims.contains(ordinal))
        .collect();
    decisions
}

/// One claim as the controller found it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: String,
    pub uid: Option<String>,
    /// Pending with no StorageClass: the cluster has no default one to give it.
    pub without_class: bool,
    pub pending: bool,
}

/// A Pod that has a claim mounted: a replica or a drain Job's.
#[derive(Debug, Clone)]
struct Holder {
    name: String,
    ip: Option<String>,
    /// The drain container's termination message (how many events it drained).
    message: Option<String>,
}

/// The claims of one WebhookIngress and the Pods and Jobs around them.
pub struct SpoolClaims {
    name: String,
    namespace: String,
    pub claims: BTreeMap<u32, Claim>,
    replica_pods: BTreeMap<u32, Holder>,
    jobs: BTreeMap<u32, JobState>,
    job_pods: BTreeMap<u32, Holder>,
}

fn selector(component: &str, instance: &str) -> String {
    workload::selector_labels(component, instance)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl SpoolClaims {
    pub async fn read(client: &Client, wi: &WebhookIngress) -> Result<Self, kube::Error> {
        let name = wi.name_any();
        let namespace = workload::namespace_of(wi);
        let workload_name = ingress_plan::workload_name(&name);
        let receivers = ListParams::default().labels(&selector(COMPONENT, &name));
        let drains = ListParams::default().labels(&selector(DRAIN_COMPONENT, &name));

        let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
        let mut claims = BTreeMap::new();
        for claim in claims_api.list(&receivers).await? {
            let Some(ordinal) = spool_claim_ordinal(&name, &claim.name_any()) else {
                continue;
            };
            // A claim being deleted was drained already; it goes once no Pod uses it.
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
            let class = claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_ref());
            claims.insert(
                ordinal,
                Claim {
                    name: claim.name_any(),
                    uid: claim.uid(),
                    without_class: pending && class.is_none(),
                    pending,
                },
            );
        }

        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let holder = |pod: &Pod| Holder {
            name: pod.name_any(),
            ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
            message: pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone()),
        };
        let replica_pods = pods
            .list(&receivers)
            .await?
            .iter()
            .filter_map(|pod| {
                ordinal_after(&format!("{workload_name}-"), &pod.name_any())
                    .map(|ordinal| (ordinal, holder(pod)))
            })
            .collect();
        let job_prefix = drain_job_name(&name, 0);
        let job_prefix = job_prefix.trim_end_matches('0');
        let mut job_pods = BTreeMap::new();
        for pod in pods.list(&drains).await? {
            let job = pod.labels().get("job-name").cloned().unwrap_or_default();
            if let Some(ordinal) = ordinal_after(job_prefix, &job) {
                // The latest Pod of a Job tells its state best.
                job_pods.insert(ordinal, holder(&pod));
            }
        }
        let jobs_api: Api<Job> = Api::namespaced(client.clone(), &namespace);
        let jobs = jobs_api
            .list(&drains)
            .await?
            .iter()
            .filter_map(|job| {
                let ordinal = ordinal_after(job_prefix, &job.name_any())?;
                Some((ordinal, job_state(job)))
            })
            .collect();
        Ok(Self {
            name,
            namespace,
            claims,
            replica_pods,
            jobs,
            job_pods,
        })
    }

    pub fn decide(&self, replicas: u32) -> Decisions {
        decide(
            replicas,
            &self.claims.keys().copied().collect(),
            &self.replica_pods.keys().copied().collect(),
            &self.jobs,
        )
    }

    /// Carries out `decisions`: creates the drain Jobs, deletes the claims found empty and
    /// the Jobs done or no longer wanted. Returns a note per drained claim.
    pub async fn apply(
        &self,
        client: &Client,
        decisions: &Decisions,
        new_jobs: &[Job],
    ) -> Result<Vec<String>, kube::Error> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &self.namespace);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &self.namespace);
        for job in new_jobs {
            // A Job's Pod template cannot change; one that exists is left to finish.
            if jobs.get_opt(&job.name_any()).await?.is_none() {
                workload::apply(&jobs, job).await?;
            }
        }
        let mut notes = Vec::new();
        for ordinal in &decisions.drained {
            let claim = &self.claims[ordinal];
            // The uid precondition: never a claim made again since the Job read it.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: claim.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            ignore_gone(claims.delete(&claim.name, &params).await)?;
            let drained = self
                .job_pods
                .get(ordinal)
                .and_then(|p| p.message.clone())
                .unwrap_or_else(|| "the drain Job succeeded".into());
            notes.push(format!(
                "deleted spool claim {}: {}",
                claim.name,
                drained.trim()
            ));
        }
        for ordinal in decisions.drained.iter().chain(&decisions.stale_jobs) {
            let job = drain_job_name(&self.name, *ordinal);
            ignore_gone(jobs.delete(&job, &DeleteParams::background()).await)?;
        }
        Ok(notes)
    }

    /// The status line of each claim still there after `decisions`, with the events its
    /// Pod reports holding.
    pub async fn status(&self, decisions: &Decisions) -> Vec<SpoolStatus> {
        let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let mut spools = Vec::new();
        for (ordinal, claim) in &self.claims {
            if decisions.drained.contains(ordinal) {
                continue;
            }
            let (state, holder) = if claim.pending {
                ("Pending", self.replica_pods.get(ordinal))
            } else if decisions.serving.contains(ordinal) {
                ("Serving", self.replica_pods.get(ordinal))
            } else if decisions.stopping.contains(ordinal) {
                ("Stopping", self.replica_pods.get(ordinal))
            } else if decisions.failed.contains(ordinal) {
                ("DrainFailed", self.job_pods.get(ordinal))
            } else {
                ("Draining", self.job_pods.get(ordinal))
            };
            let records = match holder.and_then(|h| h.ip.as_deref()) {
                Some(ip) => spooled_records(&http, ip).await,
                None => None,
            };
            spools.push(SpoolStatus {
                claim: claim.name.clone(),
                state: state.into(),
                pod: holder.map(|h| h.name.clone()),
                records,
            });
        }
        spools
    }
}

fn job_state(job: &Job) -> JobState {
    let finished = |type_: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
    };
    if finished("Complete") {
        JobState::Succeeded
    } else if finished("Failed") {
        JobState::Failed
    } else {
        JobState::Running
    }
}

fn ignore_gone<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// The undrained events a receiver reports on its admin port (`GET /spool`); None when it
/// does not answer within a second, which leaves the count out of the status.
async fn spooled_records(
    http: &HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
    ip: &str,
) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Spool {
        records: i64,
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let uri: hyper::Uri = format!("http://{host}:{ADMIN_PORT}/spool").parse().ok()?;
    let ask = async {
        let response = http.get(uri).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice::<Spool>(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
        .map(|s| s.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ordinals: &[u32]) -> BTreeSet<u32> {
        ordinals.iter().copied().collect()
    }

    #[test]
    fn claims_of_wanted_replicas_serve_and_stale_jobs_go() {
        let jobs = BTreeMap::from([(1, JobState::Running)]);
        let decided = decide(2, &set(&[0, 1]), &set(&[0]), &jobs);
        assert_eq!(decided.serving, vec![0, 1]);
        assert_eq!(decided.stale_jobs, vec![1]);
        assert!(decided.start_drain.is_empty());
    }

    #[test]
    fn a_scaled_away_claim_waits_for_its_pod_then_drains_then_goes() {
        let none = BTreeMap::new();
        let stopping = decide(1, &set(&[0, 1, 2]), &set(&[0, 2]), &none);
        assert_eq!(stopping.stopping, vec![2]);
        assert_eq!(stopping.start_drain, vec![1]);

        let jobs = BTreeMap::from([(1, JobState::Succeeded), (2, JobState::Running)]);
        let later = decide(1, &set(&[0, 1, 2]), &set(&[0]), &jobs);
        assert_eq!(later.drained, vec![1]);
        assert_eq!(later.draining, vec![2]);
        assert!(later.stale_jobs.is_empty());
    }

    #[test]
    fn while_deleting_every_claim_drains_and_a_failed_drain_keeps_its_claim() {
        let jobs = BTreeMap::from([(0, JobState::Failed), (3, JobState::Succeeded)]);
        let decided = decide(0, &set(&[0, 1]), &set(&[]), &jobs);
        assert_eq!(decided.failed, vec![0]);
        assert_eq!(decided.start_drain, vec![1]);
        // The claim of Job 3 is gone already: the Job goes too.
        assert_eq!(decided.stale_jobs, vec![3]);
    }

    #[test]
    fn ordinals_are_read_only_from_names_the_statefulset_gives() {
        assert_eq!(ordinal_after("a-receiver-", "a-receiver-12"), Some(12));
        assert_eq!(ordinal_after("a-receiver-", "a-receiver-012"), None);
        assert_eq!(ordinal_after("a-receiver-", "a-receiver-drain-1"), None);
        assert_eq!(
            spool_claim_ordinal("a", "spool-a-receiver-0"),
            Some(0),
            "the claim of replica 0"
        );
        assert_eq!(spool_claim_ordinal("a", "spool-ab-receiver-0"), None);
    }
}
