"""The built documentation (``make docs``): every public name is in the API reference, and the landing
page and a tutorial page render in headless Chromium with their figures loaded."""
import inspect
import json
import os
import pathlib
import shutil
import struct
import subprocess
import zlib

import pytest

from test_examples import MODULES, _import

REPO = pathlib.Path(__file__).resolve().parents[1]
HTML = REPO / "docs" / "_build" / "html"
SCREENSHOTS = REPO / "docs" / "_build" / "screenshots"
#: the pages opened in the browser: the landing page and the tutorial whose figure is the demo's
PAGES = ["index.html", "tutorials/mocap_hmm.html"]

needs_docs = pytest.mark.skipif(not (HTML / "objects.inv").is_file(), reason="docs not built (make docs)")


def documented_names():
    """The Python objects of the built site's inventory (objects.inv)."""
    raw = (HTML / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if " py:" in line}


def public_names(name):
    """Classes and functions a module defines and makes public (its __all__, else no underscore)."""
    module = _import(name)
    exported = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
    for attr in exported:
        obj = getattr(module, attr)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name:
            yield f"{name}.{attr}"


@needs_docs
def test_every_public_name_is_in_the_api_reference():
    documented = documented_names()
    public = [n for m in MODULES for n in public_names(m)]
    assert len(public) > 100
    missing = [n for n in public if n not in documented]
    assert not missing, f"not in the API reference: {missing}"


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def run_chromium(tmp_path, *args):
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "HOME": str(tmp_path)})


#: a page that opens a docs page in a frame and, once it has loaded, writes every image's natural size
PROBE = """<!DOCTYPE html><html><body><iframe id="page" src="{src}" width="1280" height="900"></iframe>
<pre id="result">pending</pre><script>
document.getElementById("page").addEventListener("load", function () {{
  var images = Array.from(this.contentDocument.images).map(function (img) {{
    return [img.getAttribute("src"), img.complete, img.naturalWidth, img.naturalHeight];
  }});
  document.getElementById("result").textContent = JSON.stringify(images);
}});
</script></body></html>"""


def loaded_images(tmp_path, page):
    probe = tmp_path / "probe.html"
    probe.write_text(PROBE.format(src=(HTML / page).as_uri()))
    out = run_chromium(tmp_path, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                       probe.as_uri()).stdout
    text = out.split('<pre id="result">', 1)[1].split("</pre>", 1)[0]
    assert text != "pending", f"{page} did not finish loading"
    return json.loads(text.replace("&quot;", '"').replace("&amp;", "&"))


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@needs_docs
@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_its_figures(page, tmp_path):
    assert (HTML / page).is_file(), f"{page} was not built"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / (page.replace("/", "_").replace(".html", ".png"))
    shot.unlink(missing_ok=True)
    run_chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", (HTML / page).as_uri())
    assert png_size(shot) == (1280, 2400) and shot.stat().st_size > 20_000  # a page, not a blank image
    images = loaded_images(tmp_path, page)
    figures = [img for img in images if "_static/" not in img[0] or img[0].endswith("fusion.svg")]
    assert figures, f"{page} shows no figure"
    broken = [img for img in figures if not (img[1] and img[2] > 100 and img[3] > 50)]
    assert not broken, f"figures that did not load in {page}: {broken}"
