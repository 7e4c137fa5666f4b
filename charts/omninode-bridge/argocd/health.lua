-- Argo CD health of EventTopic, EventConsumer and WebhookIngress (bridge.omninode.io).
-- The same script serves all three kinds: they share the status shape
-- (observedGeneration, conditions Ready / Paused / Conflict / Degraded).
-- Install it as resource.customizations.health.bridge.omninode.io_<Kind> in argocd-cm
-- (see the chart README); charts/test.sh runs it against sample objects.
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local annotations = obj.metadata and obj.metadata.annotations or nil
local status = obj.status
local conditions = status and status.conditions or nil

-- Paused first: a paused object is not reconciled, so its other conditions are stale.
local paused = condition(conditions, "Paused")
if (annotations ~= nil and annotations["bridge.omninode.io/paused"] == "true")
    or (paused ~= nil and paused.status == "True") then
  hs.status = "Suspended"
  hs.message = "paused by the annotation bridge.omninode.io/paused"
  return hs
end

if status == nil or conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for bridge-operator to reconcile this object"
  return hs
end

-- A status written for an older spec says nothing about the current one.
local generation = obj.metadata and obj.metadata.generation or nil
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "bridge-operator has not yet reconciled generation " .. tostring(generation)
  return hs
end

local ready = condition(conditions, "Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "waiting for the Ready condition"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

-- Reasons that mean "on its way" rather than "broken": a workload rolling out or waiting
-- for its replicas, a consumer replaying (its replicas are stopped on purpose).
local transient = { Progressing = true, ReplicasNotReady = true, Replaying = true }
if ready.reason ~= nil and transient[ready.reason] then
  hs.status = "Progressing"
  hs.message = ready.reason .. ": " .. (ready.message or "")
  return hs
end

if ready.reason ~= nil and ready.reason ~= "" then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. (ready.message or "")
  return hs
end

hs.status = "Progressing"
hs.message = ready.message or "not ready yet"
return hs
