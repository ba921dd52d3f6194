-- pixdesk hotkeys for Hammerspoon (https://www.hammerspoon.org).
-- Copy into ~/.hammerspoon/init.lua, or keep this file and add:  dofile("/path/to/plugins/hotkey/macos/init.lua")
-- then "Reload Config" from the Hammerspoon menu.
--
-- Hammerspoon starts programs without your shell's PATH: set the full path (`which pixdesk` in a terminal).
-- The first capture asks for Screen Recording permission (System Settings > Privacy & Security), and the
-- active-window mode for Accessibility: grant both to Hammerspoon.

local pixdesk = os.getenv("HOME") .. "/.local/bin/pixdesk"
local mods = { "ctrl", "alt", "cmd" }

local function snap(args)
  local task = hs.task.new(pixdesk, function(exitCode, stdOut, stdErr)
    if exitCode ~= 0 then
      local text = (stdErr ~= nil and stdErr ~= "") and stdErr or stdOut
      hs.notify.new({ title = "pixdesk", informativeText = text }):send()
    end
  end, args)
  if not task or not task:start() then
    hs.alert.show("pixdesk not found at " .. pixdesk)
  end
end

-- area: `screencapture -i` lets you drag a rectangle (Space switches to picking a window)
hs.hotkey.bind(mods, "A", function() snap({ "snap", "--select", "--notify", "--copy" }) end)
hs.hotkey.bind(mods, "W", function() snap({ "snap", "--window", "--notify", "--copy" }) end)
hs.hotkey.bind(mods, "V", function() snap({ "snap", "--clipboard", "--notify", "--copy" }) end)
