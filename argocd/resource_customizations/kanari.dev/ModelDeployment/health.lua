-- Argo CD health of a Kanari ModelDeployment (kanari.dev/v1alpha1).
-- Written for Argo CD's default sandbox for custom checks: base, table and a safe os library only
-- (no string library), on gopher-lua (Lua 5.1). The object arrives as the global `obj`.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

-- What explains a failed or rolled-back rollout, the most specific condition first.
local function failure(status)
  local invalid = condition(status, "InvalidSpec")
  if invalid ~= nil and invalid.status == "True" then
    return describe(invalid)
  end
  for _, ctype in ipairs({"ModelApproved", "AnalysisPassing", "Ready"}) do
    local c = condition(status, ctype)
    if c ~= nil and c.status == "False" then
      return describe(c)
    end
  end
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return "no reason reported"
end

local function version(model)
  if model == nil then
    return "the new model"
  end
  return model.version or model.revision or "the new model"
end

local function at_step(status)
  -- currentStep is the index of the step being run; people count steps from 1.
  return " at " .. (status.canaryWeight or 0) .. "% (step " .. ((status.currentStep or 0) + 1) .. ")"
end

local metadata = obj.metadata or {}
local status = obj.status

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Reconciliation suspended by spec.suspend"
  return hs
end

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe the ModelDeployment"
  return hs
end

-- A status written for an older spec says nothing about the current one.
if metadata.generation ~= nil and status.observedGeneration ~= metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. metadata.generation ..
    " (status is for generation " .. status.observedGeneration .. ")"
  return hs
end

local phase = status.phase or "Pending"

if phase == "Succeeded" then
  local ready = condition(status, "Ready")
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = "Serving " .. version(status.stableModel)
  elseif ready ~= nil and ready.status == "False" then
    hs.status = "Degraded"
    hs.message = "Rolled out but not ready: " .. describe(ready)
  else
    hs.status = "Progressing"
    hs.message = "Rolled out; waiting for the InferenceService to become ready"
  end
elseif phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = "Canary " .. version(status.canaryModel) .. at_step(status)
elseif phase == "Promoting" then
  hs.status = "Progressing"
  hs.message = "Promoting " .. version(status.canaryModel) .. " to all traffic"
elseif phase == "Pending" then
  hs.status = "Progressing"
  local approved = condition(status, "ModelApproved")
  if approved ~= nil and approved.status == "False" then
    hs.message = "Pending: " .. describe(approved)
  elseif status.message ~= nil and status.message ~= "" then
    hs.message = "Pending: " .. status.message
  else
    hs.message = "Pending"
  end
elseif phase == "Paused" then
  hs.status = "Suspended"
  local why = ""
  local paused = condition(status, "Paused")
  -- pauseConditions (facts, newest reasons last); the Paused condition summarises the first of them.
  if status.pauseConditions ~= nil and status.pauseConditions[1] ~= nil then
    local pc = status.pauseConditions[1]
    if pc.message ~= nil and pc.message ~= "" then
      why = ": " .. pc.message
    else
      why = ": " .. pc.reason
    end
  elseif paused ~= nil and paused.status == "True" then
    why = ": " .. describe(paused)
  end
  hs.message = "Paused with " .. version(status.canaryModel) .. at_step(status) .. why
elseif phase == "RolledBack" or phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. failure(status)
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
end
return hs
