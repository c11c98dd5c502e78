"""Names for a custom domain: `devmesh install` and `devmesh uninstall`.

Services of a mesh whose domain is not `localhost` (say `shop.test`) need this machine to resolve
`api.shop.test` to itself. devmesh does that with a marked block in the hosts file, or, for wildcard
names, with a dnsmasq snippet and the per-domain resolver setting that sends the domain to it.

- `plan`: which names a project needs;
- `hostsfile`: devmesh's blocks in a hosts file, as text;
- `resolver`: the DNS snippets for wildcards, per platform;
- `changes`: what a command changes, as exact before/after bytes, and applying it;
- `files`: atomic writes with a backup (and the in-place fallback for bind-mounted files).
"""

from __future__ import annotations
