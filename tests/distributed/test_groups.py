import torch.distributed as dist

from smallfoot.distributed import groups
from smallfoot.distributed.groups import end_process_group


def test_an_ended_group_is_destroyed_but_its_object_kept_until_exit(tmp_path):
    """After ``end_process_group`` no group is initialised and a new one can start, while the
    ended group's object (whose C++ destructor could deadlock mid-run) is still referenced."""
    for attempt in range(2):
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path / f'store{attempt}'}", rank=0, world_size=1
        )
        group = dist.group.WORLD
        gathered = [None]
        dist.all_gather_object(gathered, {"attempt": attempt})
        assert gathered == [{"attempt": attempt}]
        end_process_group()
        assert not dist.is_initialized()
        assert groups._ENDED_GROUPS[-1] is group
