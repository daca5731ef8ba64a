"""The worker image, built and run on this machine with buildah and podman, no registry
(docs/deploying.md, The image, built here).

`./dev.sh image` (`python -m harness.image`) and `tests/integration/test_image.py` use it:

- `tools`: the Debian packages (buildah, podman, runc, mmdebstrap) and the containers.conf
  that every buildah and podman call here uses;
- `base`: the Dockerfile's base image `python:3.11-slim-bookworm`, made from Debian packages
  by mmdebstrap and imported as `localhost/python:3.11-slim-bookworm`;
- `wheelhouse`: every wheel the image installs, downloaded once, so the build runs offline;
- `build`: `buildah bud` of the Dockerfile, with the layer cache;
- `run`: the `podman run` flags of a pod's security context (non-root, read-only root).

Caches (the base tarball, the wheelhouse) live under `~/.cache/workers/image`, images in
podman's storage (`/var/lib/containers`): outside the repository, shared by every checkout.
"""
