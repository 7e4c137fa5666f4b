//! Status conditions written the Kubernetes way: one entry per type, and a transition time
//! that moves only when the status does, so an unchanged state rewrites nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as the operator decides it; the transition time is filled in on upsert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Decided {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Sets `decided` in `conditions`, keeping `lastTransitionTime` when the status is unchanged.
pub fn upsert(
    conditions: &mut Vec<Condition>,
    decided: Decided,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if decided.status { "True" } else { "False" }.to_owned();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == decided.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let condition = Condition {
        type_: decided.type_.to_owned(),
        status,
        reason: decided.reason.to_owned(),
        message: decided.message,
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// Drops the condition of `type_`, if present.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let mut conditions = Vec::new();
        upsert(
            &mut conditions,
            Decided::new("Ready", false, "Creating", "creating"),
            Some(1),
            &at(10),
        );
        upsert(
            &mut conditions,
            Decided::new("Ready", false, "KafkaUnavailable", "down"),
            Some(1),
            &at(20),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].reason, "KafkaUnavailable");

        upsert(
            &mut conditions,
            Decided::new("Ready", true, "TopicReady", "ok"),
            Some(2),
            &at(30),
        );
        assert_eq!(conditions[0].last_transition_time, at(30));
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn an_unchanged_decision_leaves_the_list_equal() {
        let mut conditions = Vec::new();
        upsert(
            &mut conditions,
            Decided::new("Ready", true, "TopicReady", "ok"),
            Some(1),
            &at(10),
        );
        let before = conditions.clone();
        upsert(
            &mut conditions,
            Decided::new("Ready", true, "TopicReady", "ok"),
            Some(1),
            &at(99),
        );
        assert_eq!(conditions, before);
    }

    #[test]
    fn conditions_of_other_types_are_kept_and_removable() {
        let mut conditions = Vec::new();
        upsert(
            &mut conditions,
            Decided::new("Ready", true, "TopicReady", "ok"),
            None,
            &at(1),
        );
        upsert(
            &mut conditions,
            Decided::new("Paused", true, "Paused", "paused"),
            None,
            &at(1),
        );
        assert_eq!(conditions.len(), 2);
        remove(&mut conditions, "Paused");
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "Ready");
    }
}
