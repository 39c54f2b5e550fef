-- Ask the controller to resume: "<action>/<UTC time>" in kanari.dev/action. The time makes a repeated
-- request a new value (the controller acts on each value once); two requests within the same second
-- are one request.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kanari.dev/action"] = "resume/" .. os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
