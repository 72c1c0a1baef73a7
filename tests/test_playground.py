"""The playground page (serving/playground/) in a real headless Chromium.

`python -m serving.server` runs on loopback over the model the session's real tiny
pipeline pushed; Debian's `chromium` + `chromium-driver` (installed by .ci/run)
load /playground and are driven through Selenium, pointed at /usr/bin/chromedriver
so that Selenium Manager never downloads anything. Screenshots land in
$CHAR_RNN_TEST_ARTIFACTS (or the test's tmp dir) to be looked at.
"""

import json
import math
import os
import time

import pytest

from tests import server_process

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason='needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver; '
           '.ci/run installs them)')

WAIT = 90   # seconds: the machine is shared and loaded


@pytest.fixture(scope='module')
def served(tiny_pipeline):
  """The real server on loopback over the tiny pipeline's pushed versions."""
  base = tiny_pipeline.model_base_path
  version = max(int(v) for v in os.listdir(base) if v.isdigit())
  with open(os.path.join(base, str(version), 'assets.extra', 'metrics.json')) as f:
    metrics = json.load(f)
  with server_process.server(base) as (url, process):
    yield {'url': url, 'version': version, 'metrics': metrics, 'process': process}


@pytest.fixture(scope='module')
def artifacts(tmp_path_factory):
  path = os.environ.get('CHAR_RNN_TEST_ARTIFACTS') or str(tmp_path_factory.mktemp('artifacts'))
  os.makedirs(path, exist_ok=True)
  return path


@pytest.fixture(scope='module')
def browser(served):
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                   '--disable-gpu', '--window-size=1300,1000'):
    options.add_argument(argument)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  driver.get(f'{served["url"]}/playground')
  yield driver
  driver.quit()


def _wait(driver, predicate, message, timeout=WAIT):
  from selenium.webdriver.support.ui import WebDriverWait
  return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
      lambda d: predicate(d), message)


def _text(driver, element_id):
  return driver.find_element('id', element_id).get_attribute('textContent')


def _set(driver, element_id, value):
  element = driver.find_element('id', element_id)
  element.clear()
  if value:
    element.send_keys(value)


def _error(driver):
  box = driver.find_element('id', 'error')
  return box.get_attribute('textContent') if box.is_displayed() else ''


def _generate(driver, prompt, length, seed='', temperature='1.0'):
  _set(driver, 'prompt', prompt)
  _set(driver, 'length', str(length))
  _set(driver, 'seed', seed)
  _set(driver, 'temperature', temperature)
  driver.find_element('id', 'generate').click()


def _idle(driver):
  return driver.find_element('id', 'generate').is_enabled()


def test_page_shows_the_served_model(browser, served, artifacts):
  assert browser.current_url.endswith('/playground/')   # /playground redirects
  _wait(browser, lambda d: _text(d, 'info-version') == str(served['version']),
        'the served version is not shown')
  loss = f'{served["metrics"]["eval_loss"]:.3f}'
  _wait(browser, lambda d: loss in _text(d, 'info-loss'), f'eval loss {loss} is not shown')
  assert _text(browser, 'info-name') == 'char_rnn'
  assert f'{served["metrics"]["train_steps"]} steps' in _text(browser, 'info-training')
  assert _text(browser, 'info-corpus')   # the corpus, or a plain "unknown (...)"
  assert not _error(browser)


def test_text_streams_in_and_stop_stops_it(browser, served, artifacts):
  _wait(browser, _idle, 'page busy')
  _generate(browser, 'ROMEO:', 6000, seed='11')
  _wait(browser, lambda d: len(_text(d, 'output-text')) > 0, 'no text appeared')
  first = len(_text(browser, 'output-text'))
  _wait(browser, lambda d: len(_text(d, 'output-text')) > first + 20, 'the text does not grow')
  browser.save_screenshot(os.path.join(artifacts, 'playground_streaming.png'))
  browser.find_element('id', 'stop').click()
  _wait(browser, lambda d: 'stopped after' in _text(d, 'generate-status'), 'stop did not stop')
  stopped = len(_text(browser, 'output-text'))
  assert 0 < stopped < 6000
  time.sleep(2)
  assert len(_text(browser, 'output-text')) == stopped   # nothing more arrives
  assert _text(browser, 'generate-status') == f'stopped after {stopped} characters'
  assert not _error(browser)


def test_same_seed_same_text_and_full_length(browser, served):
  outputs = []
  for _ in range(2):
    _wait(browser, _idle, 'page busy')
    _generate(browser, 'JULIET:', 150, seed='5')
    _wait(browser, lambda d: 'characters in' in _text(d, 'generate-status'), 'did not finish')
    outputs.append(_text(browser, 'output-text'))
  assert len(outputs[0]) == 150 and outputs[0] == outputs[1]
  _generate(browser, 'JULIET:', 150, seed='6')
  _wait(browser, lambda d: 'characters in' in _text(d, 'generate-status'), 'did not finish')
  assert _text(browser, 'output-text') != outputs[0]


def test_bad_input_shows_its_error_in_the_page(browser, served, artifacts):
  limit = served['metrics']['config']['max_generate_chars']
  _wait(browser, _idle, 'page busy')
  _generate(browser, 'ROMEO:', limit + 1)
  _wait(browser, lambda d: f'limit of {limit}' in _error(d), 'no error for a length over the limit')
  # The model's own check, answered by the server as INVALID_ARGUMENT (HTTP 400).
  _generate(browser, 'ROMEO:', 50, temperature='-1')
  _wait(browser, lambda d: 'temperature must be >= 0' in _error(d),
        'the server\'s error is not shown')
  assert 'HTTP 400' in _error(browser)
  browser.save_screenshot(os.path.join(artifacts, 'playground_error.png'))
  _generate(browser, 'ROMEO:', 20, temperature='0.5')   # a good request clears the error
  _wait(browser, lambda d: 'characters in' in _text(d, 'generate-status'), 'did not finish')
  assert not _error(browser)


def test_heatmap_colours_every_character_with_alternatives(browser, served, artifacts):
  from selenium.webdriver.common.action_chains import ActionChains
  text = 'ROMEO:\nBut soft, what light through yonder window breaks?'
  _wait(browser, _idle, 'page busy')
  browser.execute_script("document.getElementById('surprise-text').value = arguments[0]", text)
  browser.find_element('id', 'score').click()
  _wait(browser, lambda d: 'nats/char' in _text(d, 'surprise-status'), 'scoring did not finish')
  spans = browser.find_elements('css selector', '#heatmap span.c')
  assert ''.join(s.get_attribute('textContent') for s in spans) == text
  probs = [s.get_attribute('data-p') for s in spans]
  assert probs[0] is None   # nothing before the first character to predict it from
  probs = [float(p) for p in probs[1:]]
  assert all(0 < p <= 1 for p in probs)
  assert len(set(probs)) > 5   # a real model: not one colour for everything
  assert all(s.value_of_css_property('background-color') not in ('rgba(0, 0, 0, 0)', '')
             for s in spans[1:])
  # The page's mean equals what `score` says for the whole text.
  shown = float(_text(browser, 'surprise-status').split()[0])
  assert shown == pytest.approx(-sum(math.log(p) for p in probs) / len(probs), abs=2e-3)
  ActionChains(browser).move_to_element(spans[10]).perform()
  _wait(browser, lambda d: len(d.find_elements('css selector', '#tooltip tr.alt')) == 5,
        'no alternatives on hover')
  labels = [r.find_elements('tag name', 'td')[0].text
            for r in browser.find_elements('css selector', '#tooltip tr.alt')]
  assert all(labels) and not any(label.startswith('#') for label in labels)   # real characters
  browser.save_screenshot(os.path.join(artifacts, 'playground_heatmap.png'))
  assert not _error(browser)


def test_server_down_is_shown_in_the_page(browser, served, artifacts):
  served['process'].terminate()
  served['process'].wait(timeout=20)
  _wait(browser, _idle, 'page busy')
  _generate(browser, 'ROMEO:', 50)
  _wait(browser, lambda d: 'Cannot reach the model server' in _error(d),
        'a server that is down is not reported in the page')
  browser.save_screenshot(os.path.join(artifacts, 'playground_server_down.png'))
