"""The committed stubs are exactly what `make proto` generates from proto/."""

from pathlib import Path

from doctor_common import protogen


def test_stubs_match_proto_sources(tmp_path: Path) -> None:
    """Regenerating into a temp dir yields byte-identical files: a .proto edit without `make proto` fails here."""
    fresh = {p.name: p.read_text() for p in protogen.generate(tmp_path)}
    committed = {p.name: p.read_text() for p in protogen.API_DIR.glob("*_pb2*")}
    assert fresh.keys() == committed.keys(), "stub files added or removed: run `make proto`"
    drifted = [name for name in fresh if fresh[name] != committed[name]]
    assert not drifted, f"stubs drift from proto/ in {drifted}: run `make proto`"
