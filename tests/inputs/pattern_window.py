"""A Tk window showing a known pattern at a known place (run as a script by the X11 tests).

argv: X Y W H. The window is a 4x4 grid of flat colours (see cell_colour); once it is drawn the script
prints the toplevel's X window id and stays up until killed.
"""

from __future__ import annotations

import sys
import tkinter as tk


def cell_colour(col: int, row: int) -> tuple[int, int, int]:
    return (40 + 60 * col, 40 + 60 * row, 255 - 50 * ((col + row) % 4))


def main() -> None:
    x, y, w, h = (int(v) for v in sys.argv[1:5])
    root = tk.Tk()
    root.geometry(f"{w}x{h}+{x}+{y}")
    canvas = tk.Canvas(root, width=w, height=h, highlightthickness=0, borderwidth=0)
    canvas.place(x=0, y=0, width=w, height=h)
    for row in range(4):
        for col in range(4):
            red, green, blue = cell_colour(col, row)
            fill = f"#{red:02x}{green:02x}{blue:02x}"
            x0, y0 = col * w // 4, row * h // 4
            x1, y1 = (col + 1) * w // 4, (row + 1) * h // 4
            canvas.create_rectangle(x0, y0, x1, y1, fill=fill, outline="", width=0)
    root.update()
    print(root.wm_frame(), flush=True)
    root.mainloop()


if __name__ == "__main__":
    main()
