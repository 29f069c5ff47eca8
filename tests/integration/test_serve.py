"""The Serve app for real: the tiny trained run behind serve/config.yaml's deployments on the test
Ray, the official openai client (plain and streaming), /recommend, validation, the bearer token, a
replica killed under load, the web page in headless Chromium, `ecr-ray chat` and `serve run`."""
import asyncio
import concurrent.futures
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
import yaml

from ecr_ray.emotion.labels import LABELS
from ecr_ray.serving.app import SERVE_CONFIG
from ecr_ray.serving.components import load_run

from tests.conftest import SERVE_PORT, free_port

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TALK = [{"role": "user", "content": "Hi! I loved Inception and The Matrix. Can you recommend a thriller?"}]


@pytest.fixture(scope="module")
def served(gen_run, ray_local):
    from ray import serve

    from ecr_ray.serving.app import deploy

    cfg, run_dir, _ = gen_run
    os.environ[load_run(run_dir.root)[0].serve.token_env] = TOKEN  # read by the app builder
    try:
        base = deploy(run_dir.root, port=SERVE_PORT)
    finally:
        os.environ.pop(cfg.serve.token_env)
    yield base, run_dir
    serve.delete("ecr")


@pytest.fixture(scope="module")
def local_parts(gen_run):
    from ecr_ray.rundir import RunDir
    from ecr_ray.serving.components import LocalParts

    return LocalParts(RunDir(gen_run[1].root))


def test_chat_completions_with_the_openai_client_plain_and_streamed(served, local_parts):
    import openai

    from ecr_ray.serving.components import answer

    base, run_dir = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN)
    assert [m.id for m in client.models.list()] == ["ecr-ray"]
    reply = client.chat.completions.create(model="ecr-ray", messages=TALK)
    text, ecr = reply.choices[0].message.content, reply.model_extra["ecr"]
    finish = reply.choices[0].finish_reason
    assert text and finish == ("length" if reply.usage.completion_tokens == load_run(run_dir.root)[0].gen.decoding.max_new_tokens else "stop")

    items = ecr["items"]
    assert len(items) == 5 and all(i["title"] for i in items)
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True) and 0 < sum(i["score"] for i in items) <= 1
    mentioned = {e["id"] for e in ecr["entities"]}
    assert {"Inception", "The Matrix"} <= {e["name"] for e in ecr["entities"]} and not mentioned & {i["item"] for i in items}
    assert [e["message"] for e in ecr["emotions"]] == [TALK[0]["content"]]
    felt = ecr["emotions"][0]
    assert set(felt["labels"]) <= set(LABELS) and felt["labels"][0] == max(felt["probs"], key=felt["probs"].get)
    assert ecr["knowledge"]["item"] == items[0]["title"]
    reasons = [r for i in items for r in i["reasons"]]  # from the model's evidence: only mentioned entities that added to the score
    assert reasons and all(r["entity"] in mentioned and r["score"] > 0 and r["text"].startswith("you ") for r in reasons)

    # the same parts in-process give the same recommendation and, decoding greedily, the same response
    found, args = asyncio.run(answer(local_parts, TALK, 5))
    assert [(i["item"], i["reasons"]) for i in found["items"]] == [(i["item"], i["reasons"]) for i in items]
    assert asyncio.run(local_parts.reply(*args))["text"] == text
    detector = local_parts.classifier  # a message's emotions are kept: a later turn classifies only its new message
    again = detector.detect([TALK[0]["content"], "Something funny now, please"])
    assert again[0] is detector.known[TALK[0]["content"]] and len(detector.known) >= 2
    assert [round(p, 4) for p in again[0]["probs"]] == list(felt["probs"].values())

    stream = client.chat.completions.create(model="ecr-ray", messages=TALK, stream=True)
    chunks = list(stream)
    assert chunks[0].model_extra["ecr"]["items"] == items
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text and chunks[-1].choices[0].finish_reason == finish
    assert len(chunks) > 3  # token by token, not one piece
    assert reply.usage.completion_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    rec = requests.post(f"{base}/recommend", json={"messages": TALK, "top_k": 3}, headers=AUTH, timeout=60).json()
    assert rec["items"] == items[:3] and rec["emotions"] == ecr["emotions"] and rec["entities"] == ecr["entities"]


def test_the_chat_decodes_as_its_figures_were_measured(gen_run, tmp_path):
    """The generator's chat decoding is the one gen-eval-served recorded in its report, not its training run's;
    a `--set` override still wins."""
    import shutil

    from ecr_ray.artifacts import report
    from ecr_ray.rundir import RunDir
    from ecr_ray.serving.components import Responder

    cfg, run_dir, _ = gen_run
    evaluated = run_dir.read_json(report("gen-eval-served-dev"))["decoding"]
    assert evaluated == dataclasses.asdict(cfg.gen.decoding)
    copy = RunDir(shutil.copytree(run_dir.root, tmp_path / "run"))
    copy.write_text(report("gen-eval-served-dev"), json.dumps({"decoding": {**evaluated, "do_sample": True, "temperature": 0.5}}))
    chat = Responder(copy).generator.decoding
    assert (chat.do_sample, chat.temperature) == (True, 0.5)
    assert Responder(copy, ["gen.decoding.temperature=0.9"]).generator.decoding.temperature == 0.9


def test_reasons_carry_the_stance_read_for_each_movie(served):
    """A mixed message: each movie gets its own stance (not the message's emotions); a reason says "liked" only
    for a movie read as liked, and none comes from a movie read as disliked."""
    from ecr_ray.emotion.stance import PROBES, STANCES

    base, _ = served
    message, truth = PROBES[0]
    found = requests.post(f"{base}/recommend", json={"messages": [{"role": "user", "content": message}], "top_k": 5}, headers=AUTH).json()
    stances = found["emotions"][0]["stances"]
    assert sorted(s["name"] for s in stances) == sorted(truth)
    for s in stances:
        assert list(s["probs"]) == list(STANCES) and abs(sum(s["probs"].values()) - 1) < 1e-3 and s["stance"] == max(s["probs"], key=s["probs"].get)
    read = {s["entity"]: s["stance"] for s in stances}
    reasons = [r for i in found["items"] for r in i["reasons"]]
    assert reasons and all(r["stance"] == read.get(r["entity"]) and read.get(r["entity"]) != "disliked" for r in reasons)
    assert all(r["text"].startswith("you liked ") == (r["stance"] == "liked") for r in reasons)


def test_a_disliked_movies_neighbours_rank_lower_than_without_it(local_parts):
    """PROBES[0] ("... but I hated Titanic"), read with its true stances (the stance model's reading is scored on its
    own): the items most talked about with Titanic in the training dialogues score lower than when the message
    leaves Titanic out; read ECR's way, the message's "loved" would have raised them."""
    from ecr_ray.emotion.stance import PROBES, STANCES

    message, truth = PROBES[0]
    recommender = local_parts.recommender
    assert recommender.rcfg.entity_stance

    def logits(text):
        found = local_parts.classifier.detect([text])[0]
        stances = [{**s, "stance": truth[s["name"]], "probs": {k: 0.9 if k == truth[s["name"]] else 0.05 for k in STANCES}}
                   for s in found["stances"]]
        return recommender.scores([{"role": "user", "content": text}], [found["probs"]], [stances])[0], stances

    (named, stances), (unnamed, _) = logits(message), logits(message.replace(", but I hated Titanic", ""))
    titanic = next(s["entity"] for s in stances if s["name"] == "Titanic")
    together = recommender.model.tables["items"].index_select(0, torch.tensor([titanic])).to_dense()[0]
    neighbours = [i for i in together.argsort(descending=True)[:5].tolist() if together[i] > 0 and unnamed[i].isfinite()]
    assert len(neighbours) >= 3, "the tiny pool talks about Titanic with too few movies for this check"
    assert all(named[i] < unnamed[i] for i in neighbours), [(i, named[i].item(), unnamed[i].item()) for i in neighbours]


def test_openai_request_fields_are_honoured(served):
    import openai

    base, _ = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN)
    ask = lambda **kw: client.chat.completions.create(model="ecr-ray", messages=TALK, **kw)  # noqa: E731
    full = ask()
    cut = ask(max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    stop = full.choices[0].message.content.split()[2]
    stopped = ask(stop=[stop])
    assert stopped.choices[0].message.content == full.choices[0].message.content.split(stop)[0].strip()
    assert stopped.choices[0].finish_reason == "stop"

    chunks = list(ask(stream=True, max_tokens=4, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"

    as_json = ask(response_format={"type": "json_object"})
    turn = json.loads(as_json.choices[0].message.content)
    assert turn == {"response": full.choices[0].message.content, "recommendations": [i["title"] for i in full.model_extra["ecr"]["items"]]}
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(response_format={"type": "json_object"}, stream=True))
    assert json.loads(streamed) == turn

    parts = [{"role": "user", "content": [{"type": "text", "text": TALK[0]["content"]}]}]
    same = client.chat.completions.create(model="ecr-ray", messages=parts, metadata={"run": "test"}, store=False, logprobs=False,
                                          presence_penalty=0.0, user="u1", service_tier="auto")
    assert same.choices[0].message.content == full.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="json_schema is not supported"):
        ask(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})


def test_hostile_requests_answer_4xx_in_the_openai_shape(served):
    base, _ = served
    url = f"{base}/v1/chat/completions"
    json_headers = {"Content-Type": "application/json", **AUTH}
    deep = '{"messages": ' + "[" * 5000 + "]" * 5000 + "}"

    def chunked():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(11):
            yield b"x" * (1 << 20)
        yield b'"}]}'

    cases = {
        "not UTF-8": (requests.post(url, data=b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', headers=json_headers), 400),
        "nested too deep": (requests.post(url, data=deep, headers=json_headers), 400),
        "10 MB body": (requests.post(url, data=b"x" * (10 << 20), headers=json_headers), 413),
        "11 MB chunked body": (requests.post(url, data=chunked(), headers=json_headers), 413),
        "wrong method": (requests.get(url, headers=AUTH), 405),
        "unknown path": (requests.get(f"{base}/v2/nothing", headers=AUTH), 404),
        "image part": (requests.post(url, json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                                     headers=AUTH), 400),
    }
    for name, (answer, status) in cases.items():
        assert answer.status_code == status, (name, answer.status_code, answer.text[:200])
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], name


def test_requests_before_the_models_load_get_503_at_once(served):
    """A second app whose recommender, retriever and generator cannot be placed (64 CPUs each): it
    reports each part's state and answers 503 at once instead of waiting for a replica."""
    from ray import serve
    from ray.serve.api import _run  # serve.run waits for every replica, which here never come

    from ecr_ray.serving.app import _graph

    base, run_dir = served
    cpus = lambda n: {"ray_actor_options": {"num_cpus": n}}  # noqa: E731
    options = {"ChatIngress": cpus(0), "EmotionClassifier": cpus(0), "Recommender": cpus(64), "Retriever": cpus(64), "Generator": cpus(64)}
    _run(_graph(run_dir.root, [], options), _blocking=False, name="loading", route_prefix="/loading")
    try:
        deadline, parts = time.monotonic() + 120, {}
        while not parts.get("emotion classifier"):  # the one part that can load
            assert time.monotonic() < deadline, parts
            try:
                health = requests.get(f"{base}/loading/healthz", timeout=5)
                parts = health.json()["parts"] if health.status_code == 200 else {}
            except requests.RequestException:  # the ingress replica is still starting
                time.sleep(1)
        assert parts == {"emotion classifier": True, "recommender": False, "retriever": False, "generator": False}
        assert health.json()["ready"] is False
        ready = requests.get(f"{base}/loading/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "5" and ready.json()["parts"] == parts
        start = time.monotonic()
        answer = requests.post(f"{base}/loading/v1/chat/completions", json={"messages": TALK}, timeout=30)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5" and time.monotonic() - start < 5
        error = answer.json()["error"]
        assert error["code"] == "not_ready" and error["type"] == "server_error" and "recommender, retriever, generator" in error["message"]
    finally:
        serve.delete("loading")
    live = requests.get(f"{base}/readyz", timeout=10)
    assert live.status_code == 200 and all(live.json()["parts"].values())


def test_bad_requests_are_4xx_and_the_token_is_required(served):
    base, _ = served
    url = f"{base}/v1/chat/completions"
    post = lambda data, headers=AUTH: requests.post(url, data=data, headers={"Content-Type": "application/json", **headers}, timeout=30)  # noqa: E731
    cases = {
        "{not json": (400, None),
        '{"messages": []}': (400, "messages"),
        '{"messages": [{"role": "robot", "content": "hi"}]}': (400, "messages.0.role"),
        '{"messages": [{"role": "user", "content": ""}]}': (400, "messages[0].content"),
        '{"messages": [{"role": "user", "content": "' + "x" * 2001 + '"}]}': (400, "messages[0].content"),
        '{"messages": [' + ",".join(['{"role": "user", "content": "a"}'] * 41) + "]}": (400, "messages"),
        '{"messages": [{"role": "user", "content": "hi"}], "colour": "red"}': (400, "colour"),
        '{"messages": [{"role": "assistant", "content": "hi"}]}': (400, "messages"),
        '{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}': (404, "model"),
        '[1, 2]': (400, None),
    }
    for body, (status, param) in cases.items():
        answer = post(body)
        assert answer.status_code == status, (body[:60], answer.text)
        assert answer.json()["error"]["param"] == param and answer.json()["error"]["message"], body[:60]
    good = '{"messages": [{"role": "user", "content": "hi"}], "top_k": 2}'
    assert post(good, {}).status_code == 401 and post(good, {"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(f"{base}/v1/models", timeout=10).status_code == 401
    health = requests.get(f"{base}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == "ecr-ray" and health["ready"] is True
    assert len(post(good).json()["ecr"]["items"]) == 2


def _replicas(deployment: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(f"SERVE_REPLICA::ecr#{deployment}#")]


def test_a_killed_replica_loses_no_request(served):
    import ray

    base, _ = served
    before = _replicas("Recommender")
    assert len(before) == 1

    def ask(i):
        start = time.monotonic()
        body = {"messages": [{"role": "user", "content": f"I loved Inception {i}, anything similar?"}]}
        answer = requests.post(f"{base}/recommend", json=body, headers=AUTH, timeout=90)
        return answer.status_code, time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(ask, i) for i in range(36)]
        time.sleep(1.0)
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        results = [f.result() for f in futures]
    assert [status for status, _ in results] == [200] * len(results)
    assert max(seconds for _, seconds in results) < 60  # serve.request_timeout_s
    deadline = time.monotonic() + 60
    while (after := _replicas("Recommender")) == before or not after:
        assert time.monotonic() < deadline, "Serve did not replace the killed replica"
        time.sleep(1)


def test_the_web_page_in_headless_chromium(served, tmp_path):
    """Streams a turn (emotion, movie cards with reasons, then the text), trims old turns, starts a new
    conversation, wraps long words at 400 px and says what went wrong in plain words."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = served
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("the page test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    shots = Path(os.environ.get("ECR_PAGE_SCREENSHOTS", tmp_path))
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    css = lambda selector: driver.find_elements(By.CSS_SELECTOR, selector)  # noqa: E731

    def say(text: str) -> None:
        before = len(css(".assistant"))
        driver.find_element(By.ID, "input").send_keys(text)
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 90).until(lambda d: len(css(".assistant")) > before and d.find_element(By.ID, "send").is_enabled())

    try:
        driver.get(f"{base}/")
        assert "ecr-ray" in driver.title and driver.execute_script("return document.querySelector('link[rel=icon]') !== null")
        say("hello")  # no token yet: a plain-words error, and the message is not kept
        assert "API token" in css(".error")[-1].text and driver.execute_script("return messages.length") == 0
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "new").click()
        assert not css("#log > *")
        say(TALK[0]["content"])
        assert not css(".error") and not css(".typing")
        response = css(".assistant .response")[-1].text
        titles = [h.text for h in css(".assistant .card h3")]
        reasons = [li.text for li in css(".assistant .card li")]
        emotion = css(".user .emotion")[-1].text
        driver.save_screenshot(str(shots / "page-desktop.png"))
        driver.set_window_size(400, 900)
        say("x" * 300)  # one long word: it wraps inside its bubble, the page never scrolls sideways
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        driver.save_screenshot(str(shots / "page-400px.png"))
        # a conversation past the server's turn limit sends only its latest turns instead of failing
        driver.execute_script("messages = Array.from({length: 44}, (_, i) => ({role: i % 2 ? 'assistant' : 'user', content: 'turn ' + i}))")
        say("I loved Inception")
        assert not css(".error") and "Older turns" in css(".note")[0].text
    finally:
        driver.quit()
    expected = requests.post(f"{base}/recommend", json={"messages": TALK}, headers=AUTH, timeout=60).json()
    whole = requests.post(f"{base}/v1/chat/completions", json={"messages": TALK}, headers=AUTH, timeout=90).json()
    assert response == whole["choices"][0]["message"]["content"]  # the streamed pieces add up to the whole reply
    assert titles == [i["title"] + (f" ({i['movie']['year']})" if i["movie"] and i["movie"]["year"] else "") for i in expected["items"]]
    assert reasons == ["because " + r["text"] for i in expected["items"] for r in i["reasons"]] and reasons
    assert emotion.startswith("you sound: ") and emotion.split(": ")[1].split(", ")[0] == expected["emotions"][0]["labels"][0]


def test_chat_in_the_terminal(served, local_parts, monkeypatch, capsys):
    from ecr_ray.cli import main
    from ecr_ray.serving.components import answer

    _, run_dir = served
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"\n{TALK[0]['content']}\n   \n/reset\n"))  # blank lines are skipped; EOF ends
    assert main(["chat", "--run-dir", run_dir.root, "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("you> ") == 5 and "Traceback" not in out and "INFO" not in out
    found, args = asyncio.run(answer(local_parts, TALK, 3))
    assert "recommended: " + "; ".join(i["title"] for i in found["items"]) in _without_scores(out)
    assert f"ecr> {asyncio.run(local_parts.reply(*args))['text']}\n" in out
    assert "(a new conversation)" in out

    empty = run_dir.root + "-missing"
    assert main(["chat", "--run-dir", empty]) == 2
    assert f"ecr-ray run --config tiny --run-dir {empty}" in capsys.readouterr().err


def _without_scores(text: str) -> str:
    import re

    return re.sub(r" \(\d+\.\d%\)", "", text)


def test_serve_run_with_the_config_file(gen_run, tmp_path):
    """`serve run serve/config.yaml` in its own Ray, on the trained run (ECR_RUN_DIR), on a free port."""
    _, run_dir, _ = gen_run
    spec = yaml.safe_load(SERVE_CONFIG.read_text())
    port = free_port()
    spec["http_options"]["port"] = port
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "ECR_RUN_DIR": run_dir.root, "RAY_ADDRESS": ""}
    start = time.monotonic()
    proc = subprocess.Popen(["serve", "run", "--address", "local", str(config)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for probe in ("healthz", "readyz"):  # the ingress answers, then every part has loaded
            while True:
                assert proc.poll() is None, "serve run exited"
                assert time.monotonic() - start < 240, f"serve run: no {probe} within 240 s"
                try:
                    if requests.get(f"http://127.0.0.1:{port}/{probe}", timeout=2).ok:
                        break
                except requests.RequestException:  # refused, or held by the proxy until the app is up
                    pass
                time.sleep(1)
            print(f"serve run cold start: /{probe} 200 after {time.monotonic() - start:.1f} s")
        answer = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": TALK}, timeout=120)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # serve run shuts the app and its Ray down on Ctrl-C
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_simulator_asks_a_running_serve_by_url(served, local_parts, monkeypatch):
    """`sim.system_url`: the simulated seeker's ecr-ray is the served app, asked by the openai client; its 50 items are
    the in-process parts' for the same conversation."""
    from ecr_ray.serving.components import answer
    from ecr_ray.sim.systems import TOP, Remote

    base, run_dir = served
    cfg = load_run(run_dir.root)[0]
    monkeypatch.setenv(cfg.serve.token_env, TOKEN)
    remote = Remote(f"{base}/v1", cfg.serve.model_name, cfg.serve.token_env)
    got = remote.answer_many([({"conversation_id": 1}, TALK), ({"conversation_id": 2}, TALK)])
    found, _ = asyncio.run(answer(local_parts, TALK, TOP))
    assert [g["items"] for g in got] == [[i["item"] for i in found["items"]]] * 2 and len(got[0]["items"]) == TOP
    assert all(g["reply"] for g in got)
