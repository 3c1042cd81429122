"""The editor page in a real browser: Playwright driving Debian's Chromium against the app served by uvicorn.

Needs `apt-get install -y chromium` and `pip install playwright` (`playwright install` cannot download
browsers here, so the system Chromium is launched by path). The model is the tiny random-weight checkpoint
of test_editor_api.py; with PIX2PIXHD_EDITOR_FLAGFILE=path/to.cfg the test drives that experiment instead
(e.g. a trained local_feat model, for a screenshot that shows real images). PIX2PIXHD_SCREENSHOT=path saves
a screenshot of the page after the edits (docs/editor.png was made that way).

The test loads a scene, paints a stroke of another class, gives one car two different style clusters,
deletes another car, undoes with Ctrl+Z, tries a bad upload, and reloads the page (it resumes its session,
and re-uploads its localStorage backup when the server has forgotten the session). What is checked is what
the page shows: the generated <img> is read back from the browser after each edit and compared with the
one before, inside the edited pixels and farther than 8 pixels from them (the same ratio as in
test_editor_api.py; an untrained generator spreads a smaller change everywhere).
"""

import base64
import io
import os
import urllib.request

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

if sync_playwright is None:
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pix2pixhd_tf.editor.app import DatasetScenes, EditorServer, create_app
    from pix2pixhd_tf.editor.backends import CheckpointBackend

    flagfile = os.environ.get("PIX2PIXHD_EDITOR_FLAGFILE")
    if flagfile:
        from pix2pixhd_tf.flags import options_from_flagfile

        opts = options_from_flagfile(flagfile, phase="test")
    else:
        from tests.test_editor_api import make_experiment

        opts = make_experiment(tmp_path_factory.mktemp("browser"))
    app = create_app(CheckpointBackend.from_options(opts), scenes=DatasetScenes.from_options(opts, "test"))
    server = EditorServer(app, host="127.0.0.1", port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 720})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        wait_shown(page, -1)
        yield page
        assert not errors, f"JavaScript errors: {errors}"
        browser.close()


# ---------------------------------------------------------------------------------------- helpers


def wait_shown(page, after_revision: int) -> int:
    """Wait until the page shows a revision newer than `after_revision` (label and image) and is idle."""
    page.wait_for_function(
        """prev => {
            const d = document.body.dataset;
            return d.busy === "0" && +d.revision > prev && d.imageRevision === d.revision;
        }""",
        arg=after_revision,
        timeout=30_000,
    )
    return int(page.evaluate("document.body.dataset.revision"))


def shown_image(page) -> np.ndarray:
    """The generated image as the page shows it (drawn to a canvas in the page and read back)."""
    url = page.evaluate(
        """() => {
            const img = document.getElementById("generated");
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth;
            canvas.height = img.naturalHeight;
            canvas.getContext("2d").drawImage(img, 0, 0);
            return canvas.toDataURL("image/png");
        }"""
    )
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def maps(page, server) -> tuple[np.ndarray, np.ndarray]:
    sid = page.evaluate("window.editor.state.session")
    out = []
    for what in ("label", "instance"):
        with urllib.request.urlopen(f"{server.url}api/sessions/{sid}/{what}.png") as response:
            out.append(np.asarray(Image.open(io.BytesIO(response.read()))).astype(np.int64))
    return out[0], out[1]


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) on the label canvas."""
    box = page.locator("#overlay-canvas").bounding_box()
    width, height = page.evaluate("[window.editor.state.width, window.editor.state.height]")
    return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height


def inner_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of `mask` farthest from its border."""
    distance = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(distance.argmax(), mask.shape)
    return int(x), int(y)


def assert_local(before: np.ndarray, after: np.ndarray, edited: np.ndarray, what: str) -> None:
    diff = np.abs(after.astype(np.float64) - before).max(-1)
    far = ~ndimage.binary_dilation(edited, iterations=8)
    inside, outside = diff[edited].mean(), diff[far].mean()
    assert inside > 10 and inside > 3 * outside, f"{what}: mean change {inside:.1f} inside, {outside:.1f} far away"


def select_region(page, x: int, y: int, region: int) -> None:
    page.locator('input[name="tool"][value="select"]').check()
    page.mouse.click(*to_screen(page, x, y))
    page.wait_for_function(
        "id => window.editor.selected === id && document.body.dataset.busy === '0'", arg=region, timeout=30_000
    )
    page.locator("#inspector").wait_for(state="visible")


# ---------------------------------------------------------------------------------------- the test


def test_edit_a_scene_in_the_browser(page, server):
    from pix2pixhd_tf.data.synthetic import CAR, SIDEWALK

    revision = int(page.evaluate("document.body.dataset.revision"))
    state = page.evaluate("window.editor.state")
    height, width = state["height"], state["width"]
    assert page.locator("#palette button").count() == 9 and page.locator("#scene-select option").count() >= 2

    # 1. A brush stroke of sidewalk across the upper left (sky and buildings there).
    label0, instance0 = maps(page, server)
    before = shown_image(page)
    page.locator('input[name="tool"][value="brush"]').check()
    page.locator(f'#palette button[data-class-id="{SIDEWALK}"]').click()
    page.eval_on_selector(
        "#radius",
        "el => { el.value = String(Math.max(2, Math.round(el.max / 16))); el.dispatchEvent(new Event('input')); }",
    )
    y = height * 0.2
    page.mouse.move(*to_screen(page, width * 0.12, y))
    page.mouse.down()
    for t in np.linspace(0.12, 0.32, 8)[1:]:
        page.mouse.move(*to_screen(page, width * t, y + 4 * t))
    page.mouse.up()
    revision = wait_shown(page, revision)
    label1, instance1 = maps(page, server)
    painted = (label1 != label0) | (instance1 != instance0)
    assert painted.sum() > 50 and (label1[painted] == SIDEWALK).all()
    after = shown_image(page)
    assert_local(before, after, painted, "brush stroke")

    # 2. Change one car's style: select it, click two different style swatches.
    regions = page.evaluate("window.editor.state.regions")
    cars = sorted((r for r in regions if r["class_id"] == CAR), key=lambda r: -r["pixels"])
    assert len(cars) >= 2, "the test scene needs two cars"
    car, other = cars[0], cars[1]
    car_mask = instance1 == car["id"]
    select_region(page, *inner_pixel(car_mask), car["id"])
    swatches = page.locator("#swatches button")
    assert swatches.count() >= 2
    swatches.nth(0).click()
    revision = wait_shown(page, revision)
    before = shown_image(page)
    swatches = page.locator("#swatches button")
    swatches.nth(1).click()
    revision = wait_shown(page, revision)
    assert page.locator('#swatches button[aria-pressed="true"]').get_attribute("data-cluster") == "1"
    assert_local(before, shown_image(page), car_mask, "restyle")

    # 3. Delete another car: select it and press Delete.
    other_mask = instance1 == other["id"]
    select_region(page, *inner_pixel(other_mask), other["id"])
    before = shown_image(page)
    page.locator("#delete-button").click()
    revision = wait_shown(page, revision)
    _, instance3 = maps(page, server)
    assert not (instance3 == other["id"]).any()
    assert_local(before, shown_image(page), other_mask, "delete")

    # The restyled car keeps its style; select it again for the picture.
    assert page.evaluate(f"window.editor.state.regions.find(r => r.id === {car['id']}).style") == 1
    select_region(page, *inner_pixel(car_mask), car["id"])
    page.wait_for_function(  # the swatches: the car rendered in each of its class's clusters
        "() => { const s = [...document.querySelectorAll('#swatches img')];"
        " return s.length > 1 && s.every(i => i.complete && i.naturalWidth > 0); }",
        timeout=30_000,
    )
    screenshot = os.environ.get("PIX2PIXHD_SCREENSHOT")
    if screenshot:
        os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
        page.screenshot(path=screenshot)

    # 4. Undo with the keyboard brings the deleted car back, exactly as it was shown.
    shown_before_delete = before
    page.keyboard.press("Control+z")
    revision = wait_shown(page, revision)
    np.testing.assert_array_equal(shown_image(page), shown_before_delete)

    # 5. A bad upload: the page shows the server's message.
    page.set_input_files("#upload-label", files=[{"name": "x.png", "mimeType": "image/png", "buffer": b"not a png"}])
    page.locator("#upload-button").click()
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not a PNG" in error.text_content()

    # 6. A reload resumes the session; if the server forgot it, the page uploads this browser's backup.
    session = page.evaluate("window.editor.state.session")
    backed_up = "s => { const b = JSON.parse(localStorage.getItem('pix2pixhd_editor.backup') || '{}'); "
    backed_up += "return b.session === s.session && b.revision === s.revision; }"
    page.wait_for_function(backed_up, arg=page.evaluate("window.editor.state"), timeout=30_000)
    label_now, instance_now = maps(page, server)
    page.reload()
    wait_shown(page, -1)
    assert page.evaluate("window.editor.state.session") == session
    page.evaluate("localStorage.setItem('pix2pixhd_editor.session', 'forgotten-by-the-server')")
    page.reload()
    wait_shown(page, -1)
    assert page.evaluate("window.editor.state.session") != session
    assert "restored" in page.locator("#status").text_content()
    label_restored, instance_restored = maps(page, server)
    np.testing.assert_array_equal(label_restored, label_now)
    np.testing.assert_array_equal(instance_restored, instance_now)
    assert page.evaluate(f"window.editor.state.regions.find(r => r.id === {car['id']}).style") == 1
