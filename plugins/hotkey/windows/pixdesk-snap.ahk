#Requires AutoHotkey v2.0
#SingleInstance Force
; pixdesk hotkeys for Windows (AutoHotkey v2: https://www.autohotkey.com).
; Double-click to run; to start it at logon, put a shortcut to it in shell:startup (Win+R, "shell:startup").
;
;   Win+Alt+A   ask about an area: the Snipping Tool (Win+Shift+S) copies it, pixdesk reads the clipboard
;   Win+Alt+W   ask about the active window
;   Win+Alt+V   ask about the image already on the clipboard
;
; Set PIXDESK to the full path if pixdesk.exe is not on PATH, e.g. the venv's Scripts\pixdesk.exe.
PIXDESK := "pixdesk"

Snap(args) {
    try Run(Format('"{1}" snap {2} --notify --copy', PIXDESK, args), , "Hide")
    catch Error as e
        MsgBox("pixdesk could not be started (" PIXDESK "): " e.Message, "pixdesk", "Icon!")
}

#!a:: {
    A_Clipboard := ""              ; empty it, so ClipWait sees the new snip and not an old copy
    Send("#+s")                    ; the Snipping Tool's area selection
    if ClipWait(60, 1)             ; 1: any data, an image included; 60 s to drag the rectangle
        Snap("--clipboard")
}
#!w:: Snap("--window")
#!v:: Snap("--clipboard")
