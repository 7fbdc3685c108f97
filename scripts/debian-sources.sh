# Debian's mirrors as this machine's apt sources name them, for root filesystems made with
# debootstrap (sourced by build-image.sh and test-libfabric2.sh; no mirror is named in the repo).
#
#   debian_mirror             the archive URI (not the security one)
#   debian_security_mirror    the security archive URI, or nothing if this machine has none
#   debian_sources SUITE      a deb822 sources file for SUITE, SUITE-updates and SUITE-security
#
# Both source formats are read: /etc/apt/sources.list and sources.list.d/*.list (one line per
# source) and sources.list.d/*.sources (deb822). Only entries for this machine's own Debian
# release count, so third-party sources (other suites, other keys) stay out.

# Prints "URI SUITE" for every Debian source entry of this machine.
debian_source_entries() {
  local codename f
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || { echo "debian-sources: no VERSION_CODENAME in /etc/os-release" >&2; return 1; }
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE COMPONENT...
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # Stanzas separated by blank lines; Types must include deb.
    awk 'function flush() { if (deb) for (u in uris) for (s in suites) print u, s; deb = 0; delete uris; delete suites }
         /^[[:space:]]*$/ { flush(); next }
         /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
         /^URIs:/ { for (i = 2; i <= NF; i++) uris[$i] = 1 }
         /^Suites:/ { for (i = 2; i <= NF; i++) suites[$i] = 1 }
         END { flush() }' "$f"
  done | awk -v c="$codename" '$2 == c || $2 == c "-updates" || $2 == c "-security"'
}

debian_mirror() {
  local uri
  uri=$(debian_source_entries | awk '$2 !~ /-security$/ { print $1; exit }')
  [ -n "$uri" ] || { echo "debian-sources: no Debian archive in this machine's apt sources" >&2; return 1; }
  echo "$uri"
}

debian_security_mirror() {
  debian_source_entries | awk '$2 ~ /-security$/ { print $1; exit }'
}

debian_sources() { # SUITE
  local suite=$1 mirror security
  mirror=$(debian_mirror) || return 1
  security=$(debian_security_mirror)
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" "$suite" "$suite"
  if [ -n "$security" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$security" "$suite"
  fi
}
