"""Who may send what (contract §8): the policy file, its checks, and the one decision.

The policy (``SUBSWITCH_POLICY_FILE``, YAML) names each producer (a name, or a glob
such as ``batch:*``), the Ed25519 public keys it signs with (several, for rotation),
the SHA-256 of the gateway API keys it holds, and its rules. Rules are allow-lists:
a command that no rule of its producer allows is refused. Gateways hold keys too,
and may sign for the producers their ``speaks_for`` names.

Everything that decides whether a command may be run is here: the worker and the
gateway ask :class:`Policy` and act on the :class:`Refusal` it gives.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
)

from subswitch.contract import (
    ORG_ID_PATTERN,
    AnyCommand,
    BlockId,
    ChangeBlockStatus,
    Int64Id,
    Lane,
)
from subswitch.errors import ConfigurationError
from subswitch.signing import (
    KeyId,
    Signature,
    load_public_key,
    parse_chunk_signature,
    parse_signature,
    signing_input,
    verify_bytes,
    verify_chunk,
)
from subswitch.text import UNSAFE_CHARACTERS, safe_line

BLOCK: Final = "ChangeBlockStatus"
SERVICE: Final = "ChangeServiceStatus"
_TYPE_ALIASES: Final = {"block": BLOCK, "service": SERVICE}
_GLOB_CHARACTERS: Final = frozenset("*?[")
#: Signatures remembered as verified, per policy (~0.5 KB each): the commands of the
#: last few seconds at full speed, which is where retries and redeliveries come from.
_VERIFIED_MAX: Final = 8192

CommandType = Literal["ChangeBlockStatus", "ChangeServiceStatus"]
#: A producer's or gateway's name: what a command's ``source`` says (or a glob of it).
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=f"^[^{UNSAFE_CHARACTERS}]+$")
]
OrgPattern = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_*?\[\]-]{1,64}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


class PolicyError(ConfigurationError):
    """A policy file that cannot be used; ``problems`` has every problem with its line.

    ``str()`` is one line: the file and each problem (``line 12: producers.billing...``).
    """

    def __init__(
        self, origin: str, problems: Sequence[PolicyProblem], *, variable: str | None = None
    ) -> None:
        listed = "; ".join(str(problem) for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        message = safe_line(f"policy {origin}: {count}: {listed}", limit=2000)
        super().__init__(message, variable=variable)
        self.origin = origin
        self.problems = tuple(problems)


@dataclass(frozen=True)
class PolicyProblem:
    """One problem of a policy file: where (line, path) and what."""

    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path + ': ' if self.path else ''}{self.message}"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PublicKeyEntry(_Strict):
    """One public key: its id (the signature names it) and the base64 of its 32 bytes."""

    id: KeyId
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        load_public_key(value)  # raises ValueError naming what is wrong
        return value


class Rule(_Strict):
    """An allow rule; a field left out allows anything, a list allows what it names.

    ``block_ids`` (``service_ids``) restrict block (service) commands; given without
    ``types``, they imply it: ``{block_ids: [2]}`` allows block 2 and nothing else.
    """

    name: str | None = None
    types: Annotated[list[CommandType], Field(min_length=1)] | None = None
    orgs: Annotated[list[OrgPattern], Field(min_length=1)] | None = None
    block_ids: Annotated[list[BlockId], Field(min_length=1)] | None = None
    service_ids: Annotated[list[Int64Id], Field(min_length=1)] | None = None
    active: StrictBool | Annotated[list[StrictBool], Field(min_length=1)] | None = None
    lanes: Annotated[list[Lane], Field(min_length=1)] | None = None

    @field_validator("types", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [
                _TYPE_ALIASES.get(item, item) if isinstance(item, str) else item for item in value
            ]
        return value


class ProducerEntry(_Strict):
    """A producer: the keys it signs with, its gateway API keys, what it may do."""

    keys: list[PublicKeyEntry] = []
    api_keys: list[Sha256Hex] = []
    rules: list[Rule] = []


class GatewayEntry(_Strict):
    """A gateway: the keys it signs with and the producers it may sign for."""

    keys: Annotated[list[PublicKeyEntry], Field(min_length=1)]
    speaks_for: Annotated[list[Name], Field(min_length=1)]


class PolicyDocument(_Strict):
    """The policy file as written."""

    producers: dict[Name, ProducerEntry]
    gateways: dict[Name, GatewayEntry] = {}


@dataclass(frozen=True)
class Refusal:
    """Why a command may not run: ``rule`` is the check that refused it (``unsigned``,
    ``unknown-key``, ``bad-signature``, ``unknown-producer``, ``source``,
    ``not-allowed``); ``message`` is one line naming it."""

    rule: str
    message: str


@dataclass(frozen=True)
class _Key:
    owner: str
    public_key: Ed25519PublicKey


@dataclass(frozen=True)
class _CompiledRule:
    label: str
    types: frozenset[str]
    orgs: tuple[str, ...] | None
    block_ids: frozenset[int] | None
    service_ids: frozenset[int] | None
    active: frozenset[bool] | None
    lanes: frozenset[Lane] | None

    @classmethod
    def of(cls, rule: Rule, index: int) -> _CompiledRule:
        label = f"rule {index + 1}" + (f" ({rule.name})" if rule.name else "")
        active = (
            rule.active if isinstance(rule.active, list) or rule.active is None else [rule.active]
        )
        return cls(
            label=label,
            types=frozenset(_effective_types(rule)),
            orgs=tuple(rule.orgs) if rule.orgs is not None else None,
            block_ids=frozenset(rule.block_ids) if rule.block_ids is not None else None,
            service_ids=frozenset(rule.service_ids) if rule.service_ids is not None else None,
            active=frozenset(active) if active is not None else None,
            lanes=frozenset(rule.lanes) if rule.lanes is not None else None,
        )

    def _id_mismatch(self, command: AnyCommand) -> str | None:
        if isinstance(command, ChangeBlockStatus):
            if self.block_ids is not None and command.block_id not in self.block_ids:
                return "block_ids"
        elif self.service_ids is not None and command.service_id not in self.service_ids:
            return "service_ids"
        return None

    def mismatch(self, command: AnyCommand) -> str | None:
        """The first field of this rule ``command`` does not satisfy, or ``None``."""
        if command.type not in self.types:
            return "types"
        ids = self._id_mismatch(command)
        if ids is not None:
            return ids
        if self.active is not None and command.active not in self.active:
            return "active"
        if self.lanes is not None and command.priority not in self.lanes:
            return "lanes"
        if self.orgs is not None and not any(_matches(command.org_id, o) for o in self.orgs):
            return "orgs"
        return None


@dataclass(frozen=True)
class _Producer:
    name: str
    rules: tuple[_CompiledRule, ...]


@dataclass
class Policy:
    """A validated policy, ready to decide (build it with :func:`load_policy`)."""

    document: PolicyDocument
    origin: str = "policy"
    #: SHA-256 (hex) of the file's bytes: which version is in force, for the log.
    digest: str = ""
    _producers: dict[str, _Producer] = field(init=False, repr=False)
    _globs: tuple[str, ...] = field(init=False, repr=False)
    _keys: dict[str, _Key] = field(init=False, repr=False)
    _api_keys: dict[str, str] = field(init=False, repr=False)
    _speaks_for: dict[str, tuple[str, ...]] = field(init=False, repr=False)
    _verified: OrderedDict[tuple[str, str], bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        doc = self.document
        self._producers = {
            name: _Producer(name, tuple(_CompiledRule.of(r, i) for i, r in enumerate(entry.rules)))
            for name, entry in doc.producers.items()
        }
        self._globs = tuple(name for name in doc.producers if _is_glob(name))
        self._keys = {}
        for owner, keys in _key_owners(doc):
            for key in keys:
                self._keys[key.id] = _Key(owner, load_public_key(key.public_key))
        self._api_keys = {
            digest.lower(): name
            for name, entry in doc.producers.items()
            for digest in entry.api_keys
        }
        self._speaks_for = {name: tuple(g.speaks_for) for name, g in doc.gateways.items()}
        self._verified = OrderedDict()

    def producer_of(self, source: str) -> str | None:
        """The producer entry that governs ``source``: its own name, else the first
        glob (in file order) that matches it, else ``None``."""
        if source in self._producers:
            return source
        return next((glob for glob in self._globs if _matches(source, glob)), None)

    def producer_for_api_key(self, api_key: str) -> str | None:
        """The producer holding ``api_key`` (the file stores its SHA-256), or ``None``."""
        digest = hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()
        return self._api_keys.get(digest)

    def may_speak_for(self, signer: str, source: str) -> bool:
        """Whether ``signer`` (a producer entry or a gateway) may sign as ``source``.

        A producer signs for the sources its entry governs; a gateway for those its
        ``speaks_for`` names (or globs) match.
        """
        if signer in self._speaks_for:
            return any(_matches(source, pattern) for pattern in self._speaks_for[signer])
        return signer in self._producers and self.producer_of(source) == signer

    def authorize(self, command: AnyCommand, *, signer: str) -> Refusal | None:
        """``None`` if ``signer`` may send ``command``, else the :class:`Refusal`."""
        name = self.producer_of(command.source)
        if name is None:
            return Refusal(
                "unknown-producer",
                f"policy: unknown producer: source {command.source!r} is no producer of the policy",
            )
        if not self.may_speak_for(signer, command.source):
            return Refusal(
                "source",
                f"policy: source: signed by {signer!r}, which may not send as {command.source!r}",
            )
        producer = self._producers[name]
        misses = []
        for rule in producer.rules:
            missed = rule.mismatch(command)
            if missed is None:
                return None
            misses.append(f"{rule.label}: {missed}")
        why = "; ".join(misses) if misses else "it has no rules"
        return Refusal(
            "not-allowed",
            f"policy: not allowed: no rule of producer {name!r} allows {_describe(command)} "
            f"({why})",
        )

    def verify(self, command: AnyCommand, signature: Signature | None) -> Refusal | None:
        """The worker's whole check: signed by a key of the policy, by a signer that may
        send as the command's ``source``, and allowed by a rule of that producer."""
        if signature is None:
            return Refusal(
                "unsigned",
                "policy: unsigned: a policy is in force and the command has no signature",
            )
        key = self._keys.get(signature.key_id)
        if key is None:
            return Refusal(
                "unknown-key", f"policy: unknown key: {signature.key_id!r} is no key of the policy"
            )
        if not self._verifies(key, command, signature):
            return Refusal(
                "bad-signature",
                f"policy: bad signature: it does not verify with key {signature.key_id!r} "
                f"of {key.owner!r}",
            )
        return self.authorize(command, signer=key.owner)

    def _verifies(self, key: _Key, command: AnyCommand, signature: Signature) -> bool:
        """``verify``, remembering the signatures that verified: a command delivered
        again (a retry, a busy target, a redelivery) costs its canonical bytes, not a
        second Ed25519 verification. A remembered signature counts only for the very
        bytes it was verified over."""
        remembered = (signature.key_id, signature.value)
        try:
            message = signing_input(command, signature.key_id)
        except UnicodeEncodeError:
            return False
        if self._verified.get(remembered) == message:
            return True
        if not verify_bytes(key.public_key, message, signature.value):
            return False
        if len(self._verified) >= _VERIFIED_MAX:
            with contextlib.suppress(KeyError):  # another thread emptied it meanwhile
                self._verified.popitem(last=False)  # the oldest; atomic, unlike iterating
        self._verified[remembered] = message
        return True

    def check_message(
        self, command: AnyCommand, signature: object | None, *, vouched_by: str | None = None
    ) -> Refusal | None:
        """:meth:`verify` for the raw ``signature`` member of a received message.

        ``vouched_by``: the signer of the verified chunk the command came in
        (:meth:`chunk_signer`); its own signature is then not verified again.
        """
        if vouched_by is not None:
            return self.authorize(command, signer=vouched_by)
        if signature is None:
            return self.verify(command, None)
        parsed = parse_signature(signature)
        if parsed is None:
            return Refusal(
                "bad-signature", "policy: bad signature: the signature member is malformed"
            )
        return self.verify(command, parsed)

    def chunk_signer(self, commands: Sequence[AnyCommand], header: object) -> str | None:
        """Who signed a bulk chunk of ``commands``, when its signature header verifies
        with a key of the policy; else ``None`` (then each command is verified alone)."""
        signature = parse_chunk_signature(header)
        if signature is None:
            return None
        key = self._keys.get(signature.key_id)
        if key is None or not verify_chunk(key.public_key, commands, signature):
            return None
        return key.owner

    def summary(self) -> str:
        """One line for the log: the file, its digest, how many producers and gateways."""
        return (
            f"policy {self.origin} (sha256 {self.digest[:12]}): "
            f"{len(self.document.producers)} producers, {len(self.document.gateways)} gateways"
        )


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file.

    Raises:
        PolicyError: with every problem and its line (a file that cannot be read: one).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        problem = PolicyProblem(None, "", f"cannot read: {exc.strerror}")
        raise PolicyError(str(path), [problem]) from None
    return parse_policy(data, origin=str(path))


def parse_policy(data: bytes | str, *, origin: str = "policy") -> Policy:
    """Validate a policy document's text (see :func:`load_policy`)."""
    raw = data.encode() if isinstance(data, str) else data
    node, problems = _compose(raw)
    if node is None:
        raise PolicyError(origin, problems or [PolicyProblem(None, "", "the file is empty")])
    document: PolicyDocument | None = None
    try:
        document = PolicyDocument.model_validate(_construct(node))
    except ValidationError as exc:
        problems += [_problem_of(error, node) for error in _split_errors(exc)]
    if document is not None:
        problems += [
            PolicyProblem(_line_of(node, path), _dotted(path), message)
            for path, message in _cross_checks(document)
        ]
    if problems or document is None:
        raise PolicyError(origin, sorted(problems, key=lambda p: (p.line or 0, p.path)))
    return Policy(document, origin=origin, digest=hashlib.sha256(raw).hexdigest())


# --- reading YAML with its line marks ---------------------------------------------------


def _compose(raw: bytes) -> tuple[yaml.Node | None, list[PolicyProblem]]:
    """The YAML node tree (which keeps line marks), and its duplicate-key problems."""
    try:
        node: yaml.Node | None = yaml.compose(raw, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        return None, [PolicyProblem(line, "", f"not YAML: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return None, [PolicyProblem(None, "", f"not YAML: {exc}")]
    if node is None:
        return None, []
    return node, list(_duplicates(node, ()))


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _duplicates(node: yaml.Node, path: tuple[Any, ...]) -> Iterator[PolicyProblem]:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name in seen:
                yield PolicyProblem(
                    key.start_mark.line + 1,
                    _dotted(path),
                    f"duplicate key {name!r} (first on line {seen[name]})",
                )
            else:
                seen[name] = key.start_mark.line + 1
            yield from _duplicates(value, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicates(item, (*path, index))


def _line_of(node: yaml.Node, path: Sequence[Any]) -> int:
    """The line of the deepest node of ``path`` that exists (an unknown key: its own)."""
    current = node
    for part in path:
        child = _child(current, part)
        if child is None:
            break
        current = child
    return current.start_mark.line + 1


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        # The last of duplicate keys: the one the loader keeps.
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                # An unknown key is reported at the key; anything else at its value.
                return value if not isinstance(value, yaml.ScalarNode) else key
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item: yaml.Node = node.value[part]
        return item
    return None


def _split_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors, those of a union's alternatives folded into one per field."""
    errors: dict[tuple[Any, ...], dict[str, Any]] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
        errors.setdefault(loc, {**error, "loc": loc})
    return list(errors.values())


def _is_union_tag(part: Any) -> bool:
    # pydantic names the alternative of a union in the location (``list[bool]``, ``bool``)
    return isinstance(part, str) and ("[" in part or part in {"bool", "str", "int"})


def _problem_of(error: dict[str, Any], node: yaml.Node) -> PolicyProblem:
    loc = tuple(error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown field {loc[-1]!r}" if loc else message
    elif error["type"] == "value_error":
        message = str(error.get("ctx", {}).get("error", message))
    return PolicyProblem(_line_of(node, loc), _dotted(loc), safe_line(message, limit=300))


def _dotted(path: Sequence[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --- checks across entries ----------------------------------------------------------------


def _cross_checks(doc: PolicyDocument) -> Iterator[tuple[tuple[Any, ...], str]]:
    yield from _key_checks(doc)
    seen_api: dict[str, str] = {}
    for name, entry in doc.producers.items():
        if not entry.keys and not entry.api_keys:
            yield ("producers", name), "has neither keys nor api_keys: it can send nothing"
        for index, digest in enumerate(entry.api_keys):
            other = seen_api.setdefault(digest.lower(), name)
            if other != name or entry.api_keys.index(digest) != index:
                yield ("producers", name, "api_keys", index), f"api key also held by {other!r}"
        for index, rule in enumerate(entry.rules):
            yield from _rule_checks(rule, ("producers", name, "rules", index))
    for name, gateway in doc.gateways.items():
        if name in doc.producers:
            yield ("gateways", name), "a gateway and a producer cannot share a name"
        for index, pattern in enumerate(gateway.speaks_for):
            if not any(p == pattern or _matches(p, pattern) for p in doc.producers):
                yield ("gateways", name, "speaks_for", index), f"{pattern!r} matches no producer"


def _key_checks(doc: PolicyDocument) -> Iterator[tuple[tuple[Any, ...], str]]:
    seen_ids: dict[str, str] = {}
    seen_keys: dict[str, str] = {}
    for section, entries in (("producers", doc.producers), ("gateways", doc.gateways)):
        for name, entry in entries.items():
            for index, key in enumerate(entry.keys):
                path = (section, name, "keys", index)
                if key.id in seen_ids:
                    yield (*path, "id"), f"key id {key.id!r} is also {seen_ids[key.id]}'s"
                if key.public_key in seen_keys:
                    yield (*path, "public_key"), f"this key is also {seen_keys[key.public_key]}'s"
                seen_ids.setdefault(key.id, repr(name))
                seen_keys.setdefault(key.public_key, repr(name))


def _rule_checks(rule: Rule, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    types = set(rule.types or ())
    if rule.types is not None and rule.block_ids is not None and BLOCK not in types:
        yield (*path, "block_ids"), "block_ids in a rule whose types has no ChangeBlockStatus"
    if rule.types is not None and rule.service_ids is not None and SERVICE not in types:
        yield (*path, "service_ids"), "service_ids in a rule whose types has no ChangeServiceStatus"
    for index, org in enumerate(rule.orgs or ()):
        if not _is_glob(org) and re.fullmatch(ORG_ID_PATTERN, org) is None:
            yield (*path, "orgs", index), f"{org!r} is no org id"


def _key_owners(doc: PolicyDocument) -> Iterator[tuple[str, list[PublicKeyEntry]]]:
    for name, entry in doc.producers.items():
        yield name, entry.keys
    for name, gateway in doc.gateways.items():
        yield name, gateway.keys


def _effective_types(rule: Rule) -> set[str]:
    if rule.types is not None:
        return set(rule.types)
    implied = {BLOCK} if rule.block_ids is not None else set()
    implied |= {SERVICE} if rule.service_ids is not None else set()
    return implied or {BLOCK, SERVICE}


def _is_glob(name: str) -> bool:
    return not _GLOB_CHARACTERS.isdisjoint(name)


def _matches(name: str, pattern: str) -> bool:
    if not _is_glob(pattern):
        return name == pattern
    return fnmatch.fnmatchcase(name, pattern)


def _describe(command: AnyCommand) -> str:
    what = (
        f"block {command.block_id}"
        if isinstance(command, ChangeBlockStatus)
        else f"service {command.service_id}"
    )
    return (
        f"{command.type} {what} active={str(command.active).lower()} "
        f"on lane {command.priority.value} in org {command.org_id!r}"
    )
