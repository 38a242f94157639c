"""Code sets per market (package data): ``ada-cdt.toml`` (ADA CDT), ``cn.toml`` (China, the clinic's own codes)."""
