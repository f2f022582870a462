--[[
A stand-in for ReaImGui's Lua module, for the tests only: `require 'imgui'` returns a function
that takes the API version and returns the API table, as ReaImGui 0.9+ does (scripts set
package.path to reaper.ImGui_GetBuiltinPath() .. '/?.lua' first). It has exactly the
functions StepFoley_lib_dialog.lua uses, with ReaImGui's signatures and return values
(github.com/cfillion/reaimgui, api/*.cpp; a read-write argument comes back after the return
value):

  CreateContext(label) -> ctx
  SetNextWindowSize(ctx, w, h, cond?) ; Cond_FirstUseEver
  Begin(ctx, name, p_open?) -> visible, p_open   (End only after a Begin that returned true)
  End(ctx)
  Text / TextWrapped / TextDisabled(ctx, text) ; Separator(ctx) ; SameLine(ctx)
  SetNextItemWidth(ctx, w)
  InputTextWithHint(ctx, label, hint, buf) -> changed, buf
  BeginCombo(ctx, label, preview) -> open ; Selectable(ctx, label, selected?) -> clicked, selected
  EndCombo(ctx)  (only after a BeginCombo that returned true)
  RadioButton(ctx, label, active) -> clicked
  Checkbox(ctx, label, v) -> changed, v
  Button(ctx, label) -> clicked
  IsKeyPressed(ctx, key) -> bool ; Key_Escape

Labels follow Dear ImGui: "visible text##id". What the user does comes from the scenario's
`imgui` list, one entry per frame, matched against a widget's id (after ##) or visible text:
  {type = WIDGET, text = ...}   InputTextWithHint returns true and the new text
  {combo = WIDGET, select = TEXT}  the combo opens and the Selectable with that text is clicked
  {check = WIDGET}  the Checkbox toggles      {radio = WIDGET}  the RadioButton is clicked
  {click = WIDGET}  the Button is clicked     {key = "Escape"}  IsKeyPressed says so
  {close = true}    the window's close button (Begin returns p_open = false)
  {switch_to_project = N}  the user clicks project tab N (the window is not modal, so REAPER
                    stays usable); nothing else happens in that frame
  {move_item = {...}}  the user drags, slips or strips an item meanwhile (fake.move_item)
When the list is used up the user closes the window. Every frame's widgets are recorded in
fake.imgui_frames ({kind, label, value, hint}) for the tests to read.
]]

local fake = assert(FAKE_REAPER, "the ReaImGui stand-in runs only inside the fake REAPER")

local function id_of(label)
  return label:match("##(.*)$") or label, label:match("^(.-)##") or label
end

local function matches(widget, label)
  local id, visible = id_of(label)
  return widget == id or widget == visible
end

return function(version)
  assert(type(version) == "string" and version:match("^0%.%d+"), "ReaImGui: bad API version " .. tostring(version))
  local ImGui = { Cond_FirstUseEver = 4, Key_Escape = 526 }
  local frame, action, combo_open, in_window

  local function record(kind, label, value, hint)
    frame[#frame + 1] = { kind = kind, label = label, value = value, hint = hint }
  end
  local function ctx_check(ctx, fn)
    assert(type(ctx) == "table" and ctx.is_context, "ReaImGui: " .. fn .. " expects a context")
    assert(in_window or fn == "Begin", "ReaImGui: " .. fn .. " outside Begin/End")
  end

  function ImGui.CreateContext(label)
    assert(type(label) == "string", "ReaImGui: CreateContext(label)")
    return { is_context = true, label = label }
  end
  function ImGui.SetNextWindowSize(ctx, w, h, cond)
    assert(type(ctx) == "table" and type(w) == "number" and type(h) == "number", "ReaImGui: SetNextWindowSize")
  end
  function ImGui.Begin(ctx, name, p_open)
    ctx_check(ctx, "Begin")
    assert(not in_window, "ReaImGui: Begin without End")
    assert(type(name) == "string", "ReaImGui: Begin(ctx, name, p_open)")
    frame = {}
    fake.imgui_frames = fake.imgui_frames or {}
    fake.imgui_frames[#fake.imgui_frames + 1] = frame
    fake.imgui_actions = fake.imgui_actions or {}
    action = table.remove(fake.imgui_actions, 1)
    if action == nil or action.close then return false, false end
    if action.switch_to_project then fake.active = action.switch_to_project end
    if action.move_item then fake.move_item(action.move_item) end
    in_window = true
    return true, p_open
  end
  function ImGui.End(ctx)
    ctx_check(ctx, "End")
    assert(not combo_open, "ReaImGui: End inside a combo")
    in_window = false
  end
  for _, name in ipairs({ "Text", "TextWrapped", "TextDisabled" }) do
    ImGui[name] = function(ctx, text)
      ctx_check(ctx, name)
      assert(type(text) == "string", "ReaImGui: " .. name .. "(ctx, text)")
      record(name, text)
    end
  end
  function ImGui.Separator(ctx) ctx_check(ctx, "Separator") end
  function ImGui.SameLine(ctx) ctx_check(ctx, "SameLine") end
  function ImGui.SetNextItemWidth(ctx, w) ctx_check(ctx, "SetNextItemWidth"); assert(type(w) == "number") end
  function ImGui.InputTextWithHint(ctx, label, hint, buf)
    ctx_check(ctx, "InputTextWithHint")
    assert(type(label) == "string" and type(hint) == "string" and type(buf) == "string",
      "ReaImGui: InputTextWithHint(ctx, label, hint, buf)")
    record("InputTextWithHint", label, buf, hint)
    if action.type and matches(action.type, label) then return true, action.text end
    return false, buf
  end
  function ImGui.BeginCombo(ctx, label, preview)
    ctx_check(ctx, "BeginCombo")
    assert(type(label) == "string" and type(preview) == "string", "ReaImGui: BeginCombo(ctx, label, preview)")
    record("BeginCombo", label, preview)
    combo_open = action.combo ~= nil and matches(action.combo, label)
    return combo_open
  end
  function ImGui.Selectable(ctx, label, selected)
    ctx_check(ctx, "Selectable")
    assert(combo_open, "ReaImGui stand-in: Selectable outside an open combo")
    assert(type(label) == "string", "ReaImGui: Selectable(ctx, label, p_selected)")
    record("Selectable", label, selected)
    local clicked = matches(action.select, label)
    return clicked, selected
  end
  function ImGui.EndCombo(ctx)
    ctx_check(ctx, "EndCombo")
    assert(combo_open, "ReaImGui: EndCombo only after BeginCombo returned true")
    combo_open = false
  end
  function ImGui.RadioButton(ctx, label, active)
    ctx_check(ctx, "RadioButton")
    assert(type(label) == "string" and type(active) == "boolean", "ReaImGui: RadioButton(ctx, label, active)")
    record("RadioButton", label, active)
    return action.radio ~= nil and matches(action.radio, label)
  end
  function ImGui.Checkbox(ctx, label, v)
    ctx_check(ctx, "Checkbox")
    assert(type(label) == "string" and type(v) == "boolean", "ReaImGui: Checkbox(ctx, label, v)")
    record("Checkbox", label, v)
    if action.check and matches(action.check, label) then return true, not v end
    return false, v
  end
  function ImGui.Button(ctx, label)
    ctx_check(ctx, "Button")
    assert(type(label) == "string", "ReaImGui: Button(ctx, label)")
    record("Button", label)
    return action.click ~= nil and matches(action.click, label)
  end
  function ImGui.IsKeyPressed(ctx, key)
    ctx_check(ctx, "IsKeyPressed")
    assert(type(key) == "number", "ReaImGui: IsKeyPressed(ctx, key)")
    return key == ImGui.Key_Escape and action.key == "Escape"
  end
  return ImGui
end
