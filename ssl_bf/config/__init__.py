"""The typed run configuration: its schema (each key's type, default, range, resume role and help in
one place), reading YAML presets and overrides, the checks every config passes, and the resume
rules. `ssl_bf.run_config.load_config` is how a command gets a finished config: read here, then
resolved and checked by its method."""
from .checks import check_common, check_ranges, value_of
from .parse import (RENAMED, all_keys, apply_dict, coerce, flatten, format_override_value, from_dict, key_field,
                    key_type, migrate, parse_override, read_config, save_config, to_dict)
from .resume import EXTEND_ONLY, PRESENTATION_ONLY, RESUME_SAFE, RUN_DEFINING, resume_differences
from .schema import (AugmentConfig, BackboneConfig, BatchFormerConfig, Config, ConfigError, DataConfig, MocoConfig,
                     MonitorConfig, Range, Role, RunConfig, TrainConfig)

__all__ = [
    "AugmentConfig", "BackboneConfig", "BatchFormerConfig", "Config", "ConfigError", "DataConfig", "EXTEND_ONLY",
    "MocoConfig", "MonitorConfig", "PRESENTATION_ONLY", "RENAMED", "RESUME_SAFE", "RUN_DEFINING", "Range", "Role",
    "RunConfig", "TrainConfig", "all_keys", "apply_dict", "check_common", "check_ranges", "coerce", "flatten",
    "format_override_value", "from_dict", "key_field", "key_type", "migrate", "parse_override", "read_config",
    "resume_differences", "save_config", "to_dict", "value_of",
]
