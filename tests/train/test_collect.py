import pytest
import torch

from emm_ray.train.collect import RowCollector


@pytest.mark.parametrize("shape", [(), (3,)])
def test_rows_come_back_in_order_across_buffers(shape: tuple[int, ...]) -> None:
    batches = [torch.randn(n, *shape) for n in (5, 1, 17, 9)]
    collector = RowCollector(chunk_bytes=7 * 4 * (shape[0] if shape else 1))  # 7 rows a buffer
    for batch in batches:
        collector.append(batch)
    assert collector.rows == 32
    assert torch.equal(collector.result(), torch.cat(batches))


def test_one_buffer_gives_the_filled_rows_only() -> None:
    collector = RowCollector()
    collector.append(torch.arange(4.0).reshape(2, 2))
    collector.append(torch.arange(4.0, 6.0).reshape(1, 2))
    assert torch.equal(collector.result(), torch.arange(6.0).reshape(3, 2))


def test_kept_rows_do_not_alias_the_appended_tensor() -> None:
    batch = torch.zeros(3)
    collector = RowCollector()
    collector.append(batch)
    batch += 1
    assert torch.equal(collector.result(), torch.zeros(3))


def test_dtype_is_kept() -> None:
    collector = RowCollector()
    collector.append(torch.tensor([1, 2], dtype=torch.int64))
    assert collector.result().dtype == torch.int64


def test_nothing_appended_is_an_error() -> None:
    with pytest.raises(ValueError, match="no rows"):
        RowCollector().result()


def test_rows_of_another_width_are_refused() -> None:
    collector = RowCollector()
    collector.append(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        collector.append(torch.zeros(2, 4))
