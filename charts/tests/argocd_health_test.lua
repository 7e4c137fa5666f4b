-- Runs the chart's Argo CD health script (argocd/health.lua) against sample objects, the
-- way Argo CD does: the object as the global `obj`, the script's return value the health.
-- Usage: lua5.4 argocd_health_test.lua path/to/health.lua
local script = arg[1]
local failures = 0

local function health(object)
  local env = { obj = object, ipairs = ipairs, pairs = pairs, tostring = tostring, type = type }
  local chunk = assert(loadfile(script, "t", env))
  return chunk()
end

local function ready(status, reason, message)
  return { type = "Ready", status = status, reason = reason, message = message,
           lastTransitionTime = "2026-11-27T09:00:00Z" }
end

local function expect(name, object, want_status, want_message_part)
  local hs = health(object)
  local ok = hs.status == want_status
    and (want_message_part == nil or string.find(hs.message or "", want_message_part, 1, true) ~= nil)
  if ok then
    print(string.format("ok   %-58s %s: %s", name, hs.status, hs.message))
  else
    failures = failures + 1
    print(string.format("FAIL %-58s got %s: %s, want %s (%s)", name, tostring(hs.status),
      tostring(hs.message), want_status, tostring(want_message_part)))
  end
end

local kinds = { "EventTopic", "EventConsumer", "WebhookIngress" }
for _, kind in ipairs(kinds) do
  expect(kind .. ": Ready True -> Healthy", {
    kind = kind, metadata = { name = "a", generation = 2 },
    status = { observedGeneration = 2, conditions = { ready("True", "TopicReady", "topic a is in line with its spec") } },
  }, "Healthy", "in line")

  expect(kind .. ": Ready False with a reason -> Degraded", {
    kind = kind, metadata = { name = "a", generation = 1 },
    status = { observedGeneration = 1, conditions = { ready("False", "KafkaUnavailable", "Kafka is unreachable") } },
  }, "Degraded", "KafkaUnavailable: Kafka is unreachable")

  expect(kind .. ": observedGeneration behind -> Progressing", {
    kind = kind, metadata = { name = "a", generation = 3 },
    status = { observedGeneration = 2, conditions = { ready("True", "TopicReady", "old spec") } },
  }, "Progressing", "generation 3")

  expect(kind .. ": no status -> Progressing", {
    kind = kind, metadata = { name = "a", generation = 1 },
  }, "Progressing", "waiting for bridge-operator")

  expect(kind .. ": paused annotation -> Suspended", {
    kind = kind, metadata = { name = "a", generation = 1, annotations = { ["bridge.omninode.io/paused"] = "true" } },
    status = { observedGeneration = 1, conditions = { ready("False", "KafkaUnavailable", "stale") } },
  }, "Suspended", "paused")

  expect(kind .. ": Paused=True condition -> Suspended", {
    kind = kind, metadata = { name = "a", generation = 1 },
    status = { observedGeneration = 1, conditions = {
      ready("True", "TopicReady", "ok"),
      { type = "Paused", status = "True", reason = "Paused", message = "paused" } } },
  }, "Suspended", "paused")
end

expect("paused annotation \"false\" is not paused", {
  metadata = { name = "a", generation = 1, annotations = { ["bridge.omninode.io/paused"] = "false" } },
  status = { observedGeneration = 1, conditions = { ready("True", "TopicReady", "ok") } },
}, "Healthy")

expect("Ready Unknown -> Progressing", {
  metadata = { name = "a", generation = 1 },
  status = { observedGeneration = 1, conditions = { ready("Unknown", "Reconciling", "") } },
}, "Progressing")

expect("status without observedGeneration -> Progressing", {
  metadata = { name = "a", generation = 1 },
  status = { conditions = { ready("True", "TopicReady", "ok") } },
}, "Progressing")

expect("EventConsumer replaying -> Progressing", {
  kind = "EventConsumer", metadata = { name = "a", generation = 3 },
  status = { observedGeneration = 3, conditions = { ready("False", "Replaying", "waiting for 1 pod to stop") } },
}, "Progressing", "Replaying")

expect("WebhookIngress rolling out -> Progressing", {
  kind = "WebhookIngress", metadata = { name = "a", generation = 2 },
  status = { observedGeneration = 2, conditions = { ready("False", "Progressing", "rolling out Deployment a-receiver: 1 of 2 replicas updated") } },
}, "Progressing", "1 of 2")

expect("WebhookIngress with a missing Secret -> Degraded", {
  kind = "WebhookIngress", metadata = { name = "a", generation = 2 },
  status = { observedGeneration = 2, conditions = { ready("False", "SecretNotFound", "Secret team-a/github does not exist") } },
}, "Degraded", "SecretNotFound")

expect("Conflict -> Degraded", {
  metadata = { name = "b", generation = 1 },
  status = { observedGeneration = 1, conditions = {
    ready("False", "Conflict", "topic a is claimed by team-a/a"),
    { type = "Conflict", status = "True", reason = "TopicClaimed", message = "claimed" } } },
}, "Degraded", "Conflict")

expect("EventTopic aimed at a topic it did not create -> Degraded", {
  kind = "EventTopic", metadata = { name = "b", generation = 1 },
  status = { observedGeneration = 1, conditions = {
    ready("False", "TopicExists", "Kafka topic b exists and was not created by this EventTopic") } },
}, "Degraded", "TopicExists")

if failures > 0 then
  print(failures .. " health check case(s) failed")
  os.exit(1)
end
print("argocd health: all cases pass")
