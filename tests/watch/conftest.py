"""A real MQTT broker (Debian's mosquitto) for the watch tests."""

import pytest

from helpers.mqtt import Broker


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()
