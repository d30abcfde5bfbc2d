"""A PNG with an alpha channel is refused, as Model Studio documents it (reference §4, §16).

Both protocols (kf2v and the media one) say "PNG without alpha". The simulator refuses
such a frame with 400 InvalidParameter and creates nothing, so a client that lets one
through fails its tests here instead of paying for it on the real service.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest
from kf2v_tasks.errors import InvalidRequestError

from .simkit import KEY, body, create, data_uri, media_body


def _image(mode: str, size=(400, 400), fmt: str = "PNG", **save) -> bytes:
    color = {"RGBA": (10, 200, 10, 90), "LA": (120, 60), "RGB": (10, 200, 10)}.get(mode, 3)
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


ALPHA_PNGS = {
    "RGBA": _image("RGBA"),
    "LA": _image("LA"),
    "P with a transparent colour": _image("P", transparency=3),
}


@pytest.mark.parametrize("kind", list(ALPHA_PNGS))
def test_kf2v_create_refuses_an_alpha_png(sim, kind):
    resp = create(sim, body(input={"last_frame_url": data_uri(ALPHA_PNGS[kind])}))
    assert resp.status_code == 400, resp.text
    doc = resp.json()
    assert doc["code"] == "InvalidParameter"
    assert "last_frame_url is a PNG with an alpha channel" in doc["message"]
    assert sim.stats()["creates"] == 0


def test_media_create_refuses_an_alpha_png(sim):
    payload = media_body()
    payload["input"]["media"][0]["url"] = data_uri(_image("RGBA", (640, 640)))
    resp = create(sim, payload)
    assert resp.status_code == 400, resp.text
    assert "first_frame is a PNG with an alpha channel" in resp.json()["message"]
    assert sim.stats()["creates"] == 0


def test_an_opaque_png_and_an_alpha_webp_are_accepted(sim):
    # Only PNG is documented "without alpha"; an RGB PNG is the fix the client suggests.
    opaque = create(sim, body(input={"first_frame_url": data_uri(_image("RGB"))}))
    webp = data_uri(_image("RGBA", fmt="WEBP"), "image/webp")
    with_alpha = create(sim, body(input={"first_frame_url": webp}))
    assert opaque.status_code == 200 and with_alpha.status_code == 200, with_alpha.text
    assert sim.stats()["creates"] == 2


async def test_a_client_that_lets_an_alpha_png_through_fails(sim):
    request = Kf2vRequest(
        first_frame_url=data_uri(_image("RGB")),
        last_frame_url=data_uri(ALPHA_PNGS["RGBA"]),
        prompt="through",
        options=GenerationOptions(model="wan2.2-kf2v-flash", resolution="480P"),
    )
    async with Kf2vClient(KEY, base_url=sim.base_url) as client:
        with pytest.raises(InvalidRequestError, match="alpha channel"):
            await client.create_task(request)
    assert sim.stats()["creates"] == 0
