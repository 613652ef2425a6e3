"""How the daemon is launched: :class:`ServerOptions` (how the server loads the model) as the
command line of ``python -m llama_cpp.server``, the environment the child gets (the caller's,
minus every setting the server would read from it), and a free loopback port to try.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["ServerOptions"]


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How the server loads the model.

    ``kv_overrides`` are llama.cpp metadata overrides (``key=type:value``): a model whose GGUF
    names no pooling type (the tiny test model) needs ``("llama.pooling_type=int:1",)`` for
    mean-pooled, flat embeddings. ``extra`` adds raw ``--name value`` arguments.
    """

    n_ctx: int = 512
    n_threads: int = 1  # a small model gains nothing from threads on a shared machine
    seed: int = 0
    embedding: bool = False
    kv_overrides: tuple[str, ...] = ()
    verbose: bool = False
    extra: tuple[str, ...] = ()

    def argv(self, model: str, alias: str, host: str, port: int) -> list[str]:
        """The server's command-line arguments (after ``python``)."""
        args = [
            *("-m", "llama_cpp.server", "--model", model, "--model_alias", alias),
            *("--host", host, "--port", str(port), "--n_ctx", str(self.n_ctx)),
            *("--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)),
            *("--seed", str(self.seed), "--embedding", _flag(self.embedding)),
            *("--verbose", _flag(self.verbose)),
        ]
        if self.kv_overrides:
            args += ["--kv_overrides", *self.kv_overrides]
        return [*args, *self.extra]


def _flag(value: bool) -> str:
    return "true" if value else "false"


# The server reads its settings from the environment too (pydantic-settings, any case): a
# stray API_KEY, CONFIG_FILE or CACHE in the caller's environment would change the daemon.
_SERVER_SETTINGS = (
    "api_key cache cache_size cache_type chat_format chat_template_kwargs clip_model_path "
    "config_file disable_ping_events draft_model draft_model_num_pred_tokens embedding "
    "flash_attn hf_model_repo_id hf_pretrained_model_name_or_path hf_tokenizer_config_path "
    "host interrupt_requests kv_overrides last_n_tokens_size logits_all lora_base lora_path "
    "main_gpu model model_alias mul_mat_q n_batch n_ctx n_gpu_layers n_threads "
    "n_threads_batch n_ubatch numa offload_kqv port root_path rope_freq_base rope_freq_scale "
    "rope_scaling_type rpc_servers seed split_mode ssl_certfile ssl_keyfile tensor_split "
    "type_k type_v use_mlock use_mmap verbose vocab_only yarn_attn_factor yarn_beta_fast "
    "yarn_beta_slow yarn_ext_factor yarn_orig_ctx"
)
_SERVER_ENV = frozenset(_SERVER_SETTINGS.split())


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _SERVER_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # the log shows what happened up to the very end
    return env


def _free_port(host: str) -> int:
    """A port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
