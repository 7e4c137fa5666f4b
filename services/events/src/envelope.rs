//! The CloudEvent as the services hold it, independent of how it travels. The bindings
//! (Kafka, HTTP) map it to and from the wire through the attribute list defined here.

use std::collections::BTreeMap;

/// The only CloudEvents version this crate reads or writes.
pub const SPEC_VERSION: &str = "1.0";

/// A CloudEvents 1.0 event. `specversion` is implied ("1.0"). `correlation_id` is also
/// the Kafka record key, so one workflow stays in one partition and in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    /// RFC 3339.
    pub time: Option<String>,
    pub datacontenttype: Option<String>,
    pub subject: Option<String>,
    /// Extension `correlationid`.
    pub correlation_id: String,
    /// Extension `causationid`: the `id` of the event that caused this one.
    pub causation_id: Option<String>,
    /// Extension `schemaversion`: consumers choose how to read `data` by it.
    pub schema_version: Option<String>,
    /// Extension `traceparent` (W3C trace context).
    pub traceparent: Option<String>,
    /// Every other attribute (for example `dataschema`, `tracestate`), by its wire name.
    pub extensions: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

/// Why bytes from the wire are not a CloudEvent this crate accepts. Each names the attribute.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the CloudEvent has no `{0}` attribute, which is required")]
    Missing(&'static str),
    #[error("the CloudEvent attribute `{name}` is not valid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("the CloudEvent has specversion `{0}`; only `1.0` is understood")]
    SpecVersion(String),
    #[error("the structured CloudEvent is not a valid JSON object: {0}")]
    Structured(String),
}

impl EnvelopeError {
    pub(crate) fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

impl CloudEvent {
    /// An event with the required attributes and nothing optional set.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
        correlation_id: impl Into<String>,
        data: Vec<u8>,
    ) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            time: None,
            datacontenttype: None,
            subject: None,
            correlation_id: correlation_id.into(),
            causation_id: None,
            schema_version: None,
            traceparent: None,
            extensions: BTreeMap::new(),
            data,
        }
    }

    /// The Kafka record key: the correlation id.
    pub fn kafka_key(&self) -> &[u8] {
        self.correlation_id.as_bytes()
    }

    /// Every context attribute except `datacontenttype` (which each binding carries in its
    /// own content-type header), by wire name, `specversion` first.
    pub(crate) fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        let named = [
            ("specversion", Some(SPEC_VERSION)),
            ("id", Some(self.id.as_str())),
            ("source", Some(self.source.as_str())),
            ("type", Some(self.ty.as_str())),
            ("time", self.time.as_deref()),
            ("subject", self.subject.as_deref()),
            ("correlationid", Some(self.correlation_id.as_str())),
            ("causationid", self.causation_id.as_deref()),
            ("schemaversion", self.schema_version.as_deref()),
            ("traceparent", self.traceparent.as_deref()),
        ];
        named
            .into_iter()
            .filter_map(|(name, value)| value.map(|value| (name, value)))
            .chain(
                self.extensions
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
    }
}

/// An event being read from the wire: attributes arrive one by one in any order, and the
/// required ones are checked once all have been seen.
#[derive(Default)]
pub(crate) struct EventBuilder {
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    specversion: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    subject: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    schema_version: Option<String>,
    traceparent: Option<String>,
    extensions: BTreeMap<String, String>,
}

impl EventBuilder {
    pub(crate) fn set(&mut self, name: &str, value: String) -> Result<(), EnvelopeError> {
        let slot = match name {
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.ty,
            "specversion" => &mut self.specversion,
            "time" => {
                value
                    .parse::<jiff::Timestamp>()
                    .map_err(|e| EnvelopeError::invalid("time", format!("not RFC 3339: {e}")))?;
                &mut self.time
            }
            "datacontenttype" => &mut self.datacontenttype,
            "subject" => &mut self.subject,
            "correlationid" => &mut self.correlation_id,
            "causationid" => &mut self.causation_id,
            "schemaversion" => &mut self.schema_version,
            "traceparent" => &mut self.traceparent,
            other => {
                validate_attribute_name(other)?;
                self.extensions.insert(other.to_owned(), value);
                return Ok(());
            }
        };
        *slot = Some(value);
        Ok(())
    }

    pub(crate) fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// Checks the required attributes. An event without a correlation id starts a flow of
    /// its own: `default_correlation` is asked first, then the event's id is used.
    pub(crate) fn finish(
        self,
        data: Vec<u8>,
        default_correlation: impl FnOnce() -> Option<String>,
    ) -> Result<CloudEvent, EnvelopeError> {
        let specversion = self
            .specversion
            .ok_or(EnvelopeError::Missing("specversion"))?;
        if specversion != SPEC_VERSION {
            return Err(EnvelopeError::SpecVersion(specversion));
        }
        let id = non_empty("id", self.id)?;
        let source = non_empty("source", self.source)?;
        let ty = non_empty("type", self.ty)?;
        let correlation_id = match self.correlation_id.filter(|c| !c.is_empty()) {
            Some(correlation_id) => correlation_id,
            None => default_correlation()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| id.clone()),
        };
        Ok(CloudEvent {
            id,
            source,
            ty,
            time: self.time,
            datacontenttype: self.datacontenttype,
            subject: self.subject,
            correlation_id,
            causation_id: self.causation_id,
            schema_version: self.schema_version,
            traceparent: self.traceparent,
            extensions: self.extensions,
            data,
        })
    }
}

fn non_empty(name: &'static str, value: Option<String>) -> Result<String, EnvelopeError> {
    match value {
        None => Err(EnvelopeError::Missing(name)),
        Some(value) if value.is_empty() => Err(EnvelopeError::invalid(name, "it is empty")),
        Some(value) => Ok(value),
    }
}

/// CloudEvents 1.0: attribute names consist of lower-case ASCII letters and digits only.
pub(crate) fn validate_attribute_name(name: &str) -> Result<(), EnvelopeError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(EnvelopeError::invalid(
            name,
            "attribute names are lower-case ASCII letters and digits only",
        ))
    }
}
