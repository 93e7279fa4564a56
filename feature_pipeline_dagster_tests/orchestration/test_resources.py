import pytest

from feature_pipeline_dagster.core.errors import ConfigError
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.orchestration.resources import vector_store_resource
from feature_pipeline_dagster_tests.conftest import clip_config, write_config


def test_the_resource_reads_the_token_as_the_cli_does(tmp_path, tiny_clip, monkeypatch):
    """One way to the server token: Dagster's resource holds the variable's name and the
    store reads it (core/store.store_token), so a missing variable is the CLI's one line."""
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config["db"].update(uri="http://127.0.0.1:19530", token_env="TEST_TOKEN_VARIABLE")
    db = load_settings(write_config(tmp_path, config)).db
    resource = vector_store_resource(db)
    monkeypatch.delenv("TEST_TOKEN_VARIABLE", raising=False)
    for opening in (resource.open, lambda: store_for(db)):
        with pytest.raises(ConfigError, match="^db.token_env: environment variable TEST_TOKEN_VARIABLE is not set$"):
            opening()
    monkeypatch.setenv("TEST_TOKEN_VARIABLE", "root:Milvus")
    assert resource.open()._token == store_for(db)._token == "root:Milvus"  # connects on first use: none here
    assert "root:Milvus" not in repr(resource)
