-- wrk script: cycles through the requests of a targets file, the format sproxy_loadgen
-- reads (`METHOD PATH [BODY]` a line; # comments). Usage:
--   wrk -t1 -c64 -d10s -H 'Authorization: Bearer ...' -s targets.lua URL -- FILE
local requests = {}
local next_index = 0

function init(args)
  local path = args[1]
  local file = assert(io.open(path, "r"), "cannot read targets file " .. tostring(path))
  for line in file:lines() do
    line = line:gsub("\r$", "")
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local method, target, body = line:match("^(%S+)%s+(%S+)%s*(.*)$")
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      requests[#requests + 1] = wrk.format(method, target, headers, body)
    end
  end
  file:close()
  assert(#requests > 0, "no requests in " .. path)
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end
