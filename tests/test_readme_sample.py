"""scripts/readme_sample.py reads the numbers of the table `python -m dfq.run` prints."""

from __future__ import annotations

from tests.conftest import load_script

PRINTED = """dfq: digits_cnn W4A4 (strict), 256 samples, test top-1 % on 450 images
data source              W4A4 calibrated   W4A4 fine-tuned    avg w bits  weight bytes   BOPs/sample
bn_stats                           95.33             96.89          4.00          8576       5.9e+07
real                               95.56             97.56          4.00          8576       5.9e+07
gaussian                           18.44                 -          4.00          8576       5.9e+07
full precision                     97.11"""


def test_the_printed_table_is_read_with_its_size_columns():
    rows = load_script("readme_sample").parse_table(PRINTED)
    assert rows == {
        "bn_stats": [95.33, 96.89],
        "real": [95.56, 97.56],
        "gaussian": [18.44, None],
        "full precision": [97.11, None],
    }
