"""The engine-independent reference of the occlusion engine's tests: occluded images built by slicing, and
random boxes (seeded) at the borders and past them."""
import torch


def naive_occluded(x, boxes, fill):
    """One occluded copy of ``x`` per box, by slicing (boxes clipped to the image)."""
    H, W = x.shape[-2:]
    out = []
    for y0, x0, y1, x1 in boxes:
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
        xo = x.clone()
        xo[0, :, y0:y1, x0:x1] = torch.as_tensor(fill, dtype=x.dtype).view(-1, 1, 1)
        out.append(xo)
    return torch.cat(out)


def random_boxes(n, H, W, gen, max_side=None, margin=4):
    """``n`` boxes ``(y0, x0, y1, x1)`` of random sides up to ``max_side`` (default half the image), their
    corners up to ``margin`` pixels before the image; each keeps some area inside it."""
    max_side = max_side or max(H, W) // 2
    boxes = []
    while len(boxes) < n:
        h, w = (int(v) for v in torch.randint(1, max_side + 1, (2,), generator=gen))
        y0 = int(torch.randint(-margin, H, (1,), generator=gen))
        x0 = int(torch.randint(-margin, W, (1,), generator=gen))
        if min(y0 + h, H) > max(y0, 0) and min(x0 + w, W) > max(x0, 0):
            boxes.append((y0, x0, y0 + h, x0 + w))
    return boxes
