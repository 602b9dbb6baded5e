"""The drawn kinds of the larger OOD set (`ood_large`): text pages, charts and screenshots.

Why a module of their own: they are the renderers (OpenCV text, matplotlib figures through Agg, no
pyplot) and half of `ood_large`'s code, while `ood_large` assembles the halves and holds the kinds
made from files the wheels ship. Each function takes the generator `ood_large` seeds for its kind and
half, so the items are the same wherever they are built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecxr.stages.confidence.ood_set import OodItem, crop, resize_short

# -- text -------------------------------------------------------------------------------------------
_WORDS = ("patient report chest film normal findings impression lungs clear no acute disease heart size "
          "within limits the of and to in is for with on as by at from page date name study series image "
          "total amount invoice order number table figure result value 2026 12 07 0451 mm kV mAs left right "
          "upper lower lobe view PA AP lateral portable supine signed reviewed radiology department").split()


def text(rng: np.random.Generator, half: str, n: int) -> list[OodItem]:
    import cv2

    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
             cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
    out = []
    for i in range(n):
        h, w = int(rng.integers(256, 641)), int(rng.integers(256, 641))
        dark_on_light = rng.random() < 0.7
        paper, ink = (int(rng.integers(200, 256)), int(rng.integers(0, 80))) if dark_on_light else \
                     (int(rng.integers(0, 60)), int(rng.integers(170, 256)))
        img = np.full((h, w), paper, np.uint8)
        font, scale = fonts[int(rng.integers(len(fonts)))], float(rng.uniform(0.4, 1.4))
        thick = int(rng.integers(1, 3))
        step = int(28 * scale + rng.integers(6, 20))
        y = int(rng.integers(step, 2 * step))
        while y < h - 8:
            words = rng.choice(_WORDS, int(rng.integers(2, 12)))
            cv2.putText(img, " ".join(words), (int(rng.integers(4, 40)), y), font, scale, ink, thick, cv2.LINE_AA)
            y += step * (2 if rng.random() < 0.1 else 1)
        if rng.random() < 0.4:  # a scanned page: blur and grain
            img = cv2.GaussianBlur(img, (3, 3), 0)
            img = np.clip(img + rng.normal(0, rng.uniform(2, 12), img.shape), 0, 255).astype(np.uint8)
        out.append(OodItem("text", f"text-{half}-{i}", img, source=f"text-{half}-{i}"))
    return out


# -- charts and screenshots (matplotlib, Agg, no pyplot) --------------------------------------------
def _render(fig: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _figure(rng: np.random.Generator, dark: bool = False) -> Any:
    from matplotlib.figure import Figure

    w, h = float(rng.uniform(2.6, 6.0)), float(rng.uniform(2.6, 6.0))
    return Figure(figsize=(w, h), dpi=int(rng.integers(50, 91)), facecolor="#202124" if dark else "white")


_CMAPS = ("viridis", "gray", "magma", "coolwarm", "Greys", "bone", "jet", "plasma", "cividis", "RdBu")


#: matplotlib draws ~10 charts a second on one core: each render is seen as this many crops and rescales
VIEWS_PER_RENDER = 5


def _views(rng: np.random.Generator, kind: str, half: str, i: int, img: np.ndarray, label: str) -> list[OodItem]:
    """`VIEWS_PER_RENDER` items of one render: the whole picture, then crops of 60-100% a side, rescaled,
    in colour or gray; all share the render as their source."""
    out = []
    for v in range(VIEWS_PER_RENDER):
        view = img if v == 0 else resize_short(crop(rng, img, 0.6), int(rng.integers(128, 513)))
        if view.ndim == 3 and rng.random() < 0.3:
            view = _gray(view)
        out.append(OodItem(kind, f"{kind}-{half}-{i}.{v}-{label}", np.ascontiguousarray(view), source=f"{kind}-{half}-{i}"))
    return out


def chart(rng: np.random.Generator, half: str, n: int) -> list[OodItem]:
    styles = ("line", "bar", "scatter", "heatmap", "pie")
    out: list[OodItem] = []
    for i in range(-(-n // VIEWS_PER_RENDER)):
        style = styles[i % len(styles)]
        fig = _figure(rng)
        ax = fig.add_subplot(1, 1, 1)
        k = int(rng.integers(1, 5))
        if style == "line":
            x = np.arange(int(rng.integers(10, 200)))
            for _ in range(k):
                ax.plot(x, np.cumsum(rng.normal(0, 1, x.size)), lw=float(rng.uniform(0.8, 3)))
            ax.grid(rng.random() < 0.5)
        elif style == "bar":
            m = int(rng.integers(3, 15))
            (ax.barh if rng.random() < 0.3 else ax.bar)(np.arange(m), rng.uniform(0, 10, m),
                                                        color=None if rng.random() < 0.5 else "0.4")
        elif style == "scatter":
            m = int(rng.integers(20, 500))
            ax.scatter(rng.normal(0, 1, m), rng.normal(0, 1, m), s=float(rng.uniform(2, 40)),
                       c=rng.random(m) if rng.random() < 0.5 else None)
        elif style == "heatmap":
            import cv2

            small = rng.normal(0, 1, (int(rng.integers(4, 12)),) * 2).astype(np.float32)
            field = small if rng.random() < 0.5 else cv2.resize(small, (40, 40), interpolation=cv2.INTER_CUBIC)
            im = ax.imshow(field, cmap=_CMAPS[int(rng.integers(len(_CMAPS)))])
            if rng.random() < 0.6:
                fig.colorbar(im, ax=ax)
        else:
            m = int(rng.integers(2, 8))
            ax.pie(rng.uniform(1, 10, m), labels=list(rng.choice(_WORDS, m)) if rng.random() < 0.5 else None)
        if style != "pie":  # few ticks: tick labels are most of matplotlib's drawing time
            ax.locator_params(nbins=int(rng.integers(2, 6)))
        if rng.random() < 0.7:
            ax.set_title(" ".join(rng.choice(_WORDS, int(rng.integers(1, 5)))))
        out += _views(rng, "chart", half, i, _render(fig), style)
    return out[:n]


def _gray(rgb: np.ndarray) -> np.ndarray:
    from edgecxr.core.spec import to_gray

    return to_gray(rgb)


def ui(rng: np.random.Generator, half: str, n: int) -> list[OodItem]:
    from matplotlib.patches import FancyBboxPatch, Rectangle

    out: list[OodItem] = []
    for i in range(-(-n // VIEWS_PER_RENDER)):
        dark = rng.random() < 0.35
        fg, panel = ("#e8eaed", "#303134") if dark else ("#202124", "#f1f3f4")
        fig = _figure(rng, dark)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.axis("off")
        accent = tuple(rng.uniform(0.1, 0.9, 3))
        ax.add_patch(Rectangle((0, 92), 100, 8, color=accent))  # title bar
        ax.text(2, 95, " ".join(rng.choice(_WORDS, 3)), color="white", fontsize=float(rng.uniform(7, 12)), va="center")
        if rng.random() < 0.6:  # a side bar of menu entries
            ax.add_patch(Rectangle((0, 0), 20, 92, color=panel))
            for j in range(int(rng.integers(4, 10))):
                ax.text(2, 86 - 8 * j, str(rng.choice(_WORDS)), color=fg, fontsize=8)
        for _ in range(int(rng.integers(2, 7))):  # boxes and buttons
            x, y = float(rng.uniform(22, 80)), float(rng.uniform(5, 80))
            bw, bh = float(rng.uniform(8, 30)), float(rng.uniform(4, 12))
            ax.add_patch(FancyBboxPatch((x, y), bw, bh, boxstyle="round,pad=0.5", fc=panel if rng.random() < 0.5 else accent,
                                        ec=fg, lw=0.8))
            ax.text(x + 1, y + bh / 2, str(rng.choice(_WORDS)), color=fg, fontsize=7, va="center")
        if rng.random() < 0.5:  # a table
            rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 5))
            cells = [[str(rng.choice(_WORDS)) if rng.random() < 0.5 else f"{rng.uniform(0, 999):.1f}"
                      for _ in range(cols)] for _ in range(rows)]
            tab = ax.table(cellText=cells, bbox=(0.25, 0.05, 0.7, 0.4))
            tab.set_fontsize(7)
        if rng.random() < 0.4:  # a small plot inside the window
            inset = fig.add_axes((0.55, 0.5, 0.4, 0.3))
            inset.plot(np.cumsum(rng.normal(0, 1, 50)), color=accent)
        out += _views(rng, "ui", half, i, _render(fig), "dark" if dark else "light")
    return out[:n]
