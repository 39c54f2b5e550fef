-- Argo CD actions on a ModelDeployment: each one sets the kanari.dev/action annotation, which the controller
-- consumes without anyone editing the spec in Git. An action is offered only in the phases where the
-- controller acts on it.
local actions = {}
local phase = "Pending"
if obj.status ~= nil and obj.status.phase ~= nil then
  phase = obj.status.phase
end
local rolling = phase == "Progressing" or phase == "Paused"
local failed = phase == "RolledBack" or phase == "Failed" or phase == "Degraded"

actions["promote"] = {["disabled"] = not rolling, ["iconClass"] = "fa fa-fw fa-forward",
  ["displayName"] = "Promote one step"}
actions["promote-full"] = {["disabled"] = not rolling, ["iconClass"] = "fa fa-fw fa-fast-forward",
  ["displayName"] = "Promote to 100%"}
actions["abort"] = {["disabled"] = not (rolling or phase == "Promoting"), ["iconClass"] = "fa fa-fw fa-undo",
  ["displayName"] = "Abort and roll back"}
actions["pause"] = {["disabled"] = phase ~= "Progressing", ["iconClass"] = "fa fa-fw fa-pause",
  ["displayName"] = "Pause"}
actions["resume"] = {["disabled"] = phase ~= "Paused", ["iconClass"] = "fa fa-fw fa-play",
  ["displayName"] = "Resume"}
actions["retry"] = {["disabled"] = not failed, ["iconClass"] = "fa fa-fw fa-redo",
  ["displayName"] = "Retry the rollout"}
return actions
