//! Topics as Kafka describes them, read with librdkafka's DescribeTopics
//! (`rd_kafka_DescribeTopics`, librdkafka 2.12), which rdkafka 0.39 does not wrap: one
//! metadata request naming the topics, instead of rdkafka's metadata call, which can only
//! ask for one topic or for every topic in the cluster. This is the operator's only unsafe
//! code besides one `mallopt` call as `main` starts: it calls the C API through the
//! bindings rdkafka re-exports (`rdkafka::bindings`, from `rdkafka-sys`), on the admin
//! client's own handle, with a queue of its own per call and a timeout. Everything
//! librdkafka allocates here is freed by [`Owned`] on every path.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as sys;
use rdkafka::client::ClientContext;

/// Kafka's id of "no topic" (`Uuid.ZERO_UUID`), reported when a broker has none to give.
const ZERO_ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// One topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub partitions: i32,
    /// The most replicas any partition has.
    pub replication_factor: i32,
    /// Kafka's id, as Kafka writes it (the URL-safe, unpadded base64 that
    /// `kafka-topics --describe` prints as `TopicId`); `None` when the broker gave none.
    pub id: Option<String>,
}

/// The descriptions of those of `names` the cluster knows, by name. One DescribeTopics
/// request; a topic the broker does not know, or reports with an error, is left out.
/// Blocks the calling thread for up to `timeout` (plus a second): call it from
/// `spawn_blocking`.
///
/// `names` must not repeat a name (librdkafka refuses the request).
pub fn describe<C: ClientContext>(
    admin: &AdminClient<C>,
    names: &[String],
    timeout: Duration,
) -> Result<HashMap<String, TopicDescription>, String> {
    let mut found = HashMap::new();
    if names.is_empty() {
        return Ok(found);
    }
    let names: Vec<CString> = names
        .iter()
        .map(|n| CString::new(n.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| "a topic name holds a NUL byte".to_owned())?;
    let mut name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    let rk = admin.inner().native_ptr();

    // SAFETY: `rk` is the admin client's live handle: `admin` is borrowed for the whole
    // call, so the client outlives every use of it here. Every pointer librdkafka returns
    // is checked for NULL before use. The queue, topic collection, options and result
    // event are owned by `Owned` guards and destroyed exactly once, on every return path;
    // librdkafka copies the topic names and the options into its request, so those may go
    // as soon as the request is enqueued. The descriptions, names and ids read from the
    // result event live as long as the event, and are copied into Rust strings before the
    // event's guard drops; so are the partition and replica lists, which librdkafka hands
    // out as arrays of `count` non-NULL pointers. If the poll times out, dropping our queue handle is safe: the
    // request holds its own reference to the queue, and a result arriving after the queue
    // is gone is discarded by librdkafka.
    unsafe {
        let queue = Owned::new(sys::rd_kafka_queue_new(rk), sys::rd_kafka_queue_destroy)
            .ok_or("librdkafka could not create a queue")?;
        let topics = Owned::new(
            sys::rd_kafka_TopicCollection_of_topic_names(name_ptrs.as_mut_ptr(), name_ptrs.len()),
            sys::rd_kafka_TopicCollection_destroy,
        )
        .ok_or("librdkafka could not create a topic collection")?;
        let options = Owned::new(
            sys::rd_kafka_AdminOptions_new(
                rk,
                sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            sys::rd_kafka_AdminOptions_destroy,
        )
        .ok_or("librdkafka could not create admin options")?;
        let mut errstr = [0 as c_char; 256];
        let err = sys::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if err != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(format!(
                "DescribeTopics options: {}",
                CStr::from_ptr(errstr.as_ptr()).to_string_lossy()
            ));
        }
        sys::rd_kafka_DescribeTopics(rk, topics.0, options.0, queue.0);

        // librdkafka answers by the request timeout at the latest; the extra second covers
        // its own timer, so a missing answer is a bug or an overloaded client, not a wait.
        let event = Owned::new(
            sys::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1000)),
            sys::rd_kafka_event_destroy,
        )
        .ok_or_else(|| format!("no answer to DescribeTopics within {timeout:?}"))?;
        if sys::rd_kafka_event_type(event.0) != sys::RD_KAFKA_EVENT_DESCRIBETOPICS_RESULT {
            return Err("an unexpected event on the DescribeTopics queue".to_owned());
        }
        if sys::rd_kafka_event_error(event.0)
            != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            let message = sys::rd_kafka_event_error_string(event.0);
            return Err(if message.is_null() {
                "DescribeTopics failed".to_owned()
            } else {
                format!(
                    "DescribeTopics failed: {}",
                    CStr::from_ptr(message).to_string_lossy()
                )
            });
        }
        let result = sys::rd_kafka_event_DescribeTopics_result(event.0);
        if result.is_null() {
            return Err("DescribeTopics returned no result".to_owned());
        }
        let mut count = 0usize;
        let descriptions = sys::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if descriptions.is_null() {
            return Ok(found);
        }
        for description in std::slice::from_raw_parts(descriptions, count) {
            let description = *description;
            if description.is_null() {
                continue;
            }
            let error = sys::rd_kafka_TopicDescription_error(description);
            if !error.is_null()
                && sys::rd_kafka_error_code(error)
                    != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                // Unknown to the broker (not created yet, or deleted): no id to report.
                continue;
            }
            let name = sys::rd_kafka_TopicDescription_name(description);
            if name.is_null() {
                continue;
            }
            let mut partition_count = 0usize;
            let partitions =
                sys::rd_kafka_TopicDescription_partitions(description, &mut partition_count);
            let mut replication_factor = 0usize;
            if !partitions.is_null() {
                for partition in std::slice::from_raw_parts(partitions, partition_count) {
                    let mut replicas = 0usize;
                    sys::rd_kafka_TopicPartitionInfo_replicas(*partition, &mut replicas);
                    replication_factor = replication_factor.max(replicas);
                }
            }
            let uuid = sys::rd_kafka_TopicDescription_topic_id(description);
            let id = if uuid.is_null() {
                None
            } else {
                let base64 = sys::rd_kafka_Uuid_base64str(uuid);
                (!base64.is_null())
                    .then(|| kafka_topic_id(&CStr::from_ptr(base64).to_string_lossy()))
                    .flatten()
            };
            found.insert(
                CStr::from_ptr(name).to_string_lossy().into_owned(),
                TopicDescription {
                    partitions: i32::try_from(partition_count).unwrap_or(i32::MAX),
                    replication_factor: i32::try_from(replication_factor).unwrap_or(i32::MAX),
                    id,
                },
            );
        }
    }
    Ok(found)
}

/// Kafka's spelling of a topic id from librdkafka's: librdkafka encodes the 16 bytes in
/// standard base64 (`+`, `/`), Kafka (`Uuid.toString`) in the URL-safe alphabet (`-`, `_`);
/// both drop the padding. `None` for the zero id.
fn kafka_topic_id(librdkafka_base64: &str) -> Option<String> {
    let id: String = librdkafka_base64
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    (id.len() == ZERO_ID.len() && id != ZERO_ID).then_some(id)
}

/// A librdkafka object this module created, destroyed with its own destructor when the
/// guard drops.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Owned<T> {
    /// `None` when librdkafka returned NULL.
    fn new(pointer: *mut T, destroy: unsafe extern "C" fn(*mut T)) -> Option<Self> {
        (!pointer.is_null()).then_some(Self(pointer, destroy))
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer is non-NULL (checked in `new`), came from the librdkafka
        // constructor matching this destructor, and is destroyed only here, once.
        unsafe { (self.1)(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_base64_becomes_kafkas_url_safe_spelling() {
        assert_eq!(
            kafka_topic_id("q+7/Xk3NRyWzX9vA0a1b2w").as_deref(),
            Some("q-7_Xk3NRyWzX9vA0a1b2w")
        );
        assert_eq!(
            kafka_topic_id("q+7/Xk3NRyWzX9vA0a1b2w==").as_deref(),
            Some("q-7_Xk3NRyWzX9vA0a1b2w")
        );
    }

    #[test]
    fn the_zero_id_and_malformed_ids_are_no_id() {
        assert_eq!(kafka_topic_id(ZERO_ID), None);
        assert_eq!(kafka_topic_id(""), None);
        assert_eq!(kafka_topic_id("short"), None);
    }
}
