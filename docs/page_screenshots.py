"""Screenshots of the chat page for docs/serving.md, taken from a trained run as a user sees it.

    python docs/page_screenshots.py --run-dir runs/cpu

Deploys the run's Serve graph on a local Ray (as `serve run serve/config.yaml` does), asks one question in
Debian's headless Chromium (apt-get install chromium chromium-driver) and saves docs/page-desktop.png and
docs/page-400px.png (`--name page-mixed --question "I loved The Matrix and Inception, but I hated Titanic..."`:
docs/page-mixed-*.png, the stance in the reasons).
"""
import argparse
import os
import tempfile
from pathlib import Path

QUESTION = "Hi! I loved Inception and The Matrix. Can you recommend a thriller?"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync")


def wait_until_ready(base: str, timeout_s: float = 300) -> None:
    """Until /readyz says 200: a first request can find a part not yet answering its probe (503, Retry-After)."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=10):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--name", default="page", help="the screenshots' name: NAME-desktop.png and NAME-400px.png")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ecr_ray.serving.app import deploy

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = deploy(args.run_dir)
    wait_until_ready(base)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(f"{base}/")
        driver.find_element(By.ID, "input").send_keys(args.question)
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 300).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant .response")
                                         and d.find_element(By.ID, "send").is_enabled())
        print("reply:", driver.find_elements(By.CSS_SELECTOR, ".assistant .response")[-1].text)
        driver.save_screenshot(str(Path(args.out) / f"{args.name}-desktop.png"))
        driver.set_window_size(400, 900)
        driver.save_screenshot(str(Path(args.out) / f"{args.name}-400px.png"))
    finally:
        driver.quit()
        ray.shutdown()


if __name__ == "__main__":
    main()
