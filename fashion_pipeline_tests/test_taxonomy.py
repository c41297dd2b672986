import pandas as pd
import pytest

from fashion_pipeline.core import taxonomy as tx
from fashion_pipeline.core.readers import read_hm_articles, read_kaggle_products
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline_tests.conftest import HM, KAGGLE, SAMPLE_ROOT


def test_the_taxonomy_has_the_documented_label_sets():
    assert len(tx.CATEGORIES) == 11 and len(set(tx.CATEGORIES)) == 11
    assert tx.GENDERS == ("Men", "Women", "Boys", "Girls", "Unisex")
    assert len(tx.USAGES) == 8


@pytest.mark.parametrize("master,sub,article,expected", [
    ("Apparel", "Topwear", "Tshirts", "Topwear"),
    ("Apparel", "Topwear", "Jackets", "Outerwear"),
    ("Apparel", "Topwear", "Blazers", "Outerwear"),
    ("Apparel", "Saree", "Sarees", "Dresses & Sets"),
    ("Apparel", "Bottomwear", "Swimwear", "Innerwear & Nightwear"),
    ("Accessories", "Socks", "Socks", "Innerwear & Nightwear"),
    ("Footwear", "Flip Flops", "Flip Flops", "Footwear"),
    ("Accessories", "Wallets", "Wallets", "Bags & Wallets"),
    ("Accessories", "Cufflinks", "Cufflinks", "Jewellery"),
    ("Personal Care", "Lips", "Lipstick", "Beauty & Personal Care"),
    ("Free Items", "Free Gifts", "Free Gifts", tx.OUT_OF_SCOPE),
    ("Sporting Goods", "Sports Equipment", "Footballs", tx.OUT_OF_SCOPE),
    ("Apparel", "Something New", "Unheard Of", None),
])
def test_kaggle_mapping(master, sub, article, expected):
    assert tx.kaggle_category(master, sub, article) == expected


@pytest.mark.parametrize("group,ptype,expected", [
    ("Garment Upper body", "T-shirt", "Topwear"),
    ("Garment Upper body", "Jacket", "Outerwear"),
    ("Garment Full body", "Dress", "Dresses & Sets"),
    ("Swimwear", "Bikini top", "Innerwear & Nightwear"),
    ("Accessories", "Earring", "Jewellery"),
    ("Accessories", "Bag", "Bags & Wallets"),
    ("Items", "Mobile case", tx.OUT_OF_SCOPE),
    ("Stationery", "Marker pen", tx.OUT_OF_SCOPE),
])
def test_hm_mapping(group, ptype, expected):
    assert tx.hm_category(group, ptype) == expected


def test_hm_gender_and_usage_only_where_defensible():
    assert tx.hm_gender("Ladieswear", "Womens Everyday Collection") == "Women"
    assert tx.hm_gender("Menswear", "Men Underwear") == "Men"
    assert tx.hm_gender("Children Sizes 92-140", "Kids Boy") == "Boys"
    assert tx.hm_gender("Divided", "Divided Collection") is None  # teen line: not guessed
    assert tx.hm_usage("Sport", "Ladies H&M Sport", "Garment Upper body") == "Sports"
    assert tx.hm_usage("Ladieswear", "Womens Everyday Collection", "Garment Upper body") is None


def test_every_source_category_in_the_sample_is_mapped():
    report = DropReport()
    k = read_kaggle_products(SAMPLE_ROOT / KAGGLE, report, check_image_files=False)
    h = read_hm_articles(SAMPLE_ROOT / HM, report, check_image_files=False)
    unmapped = {(r.master_category, r.sub_category, r.article_type) for r in k.itertuples()
                if tx.kaggle_category(r.master_category, r.sub_category, r.article_type) is None}
    unmapped |= {(r.product_group_name, r.product_type_name) for r in h.itertuples()
                 if tx.hm_category(r.product_group_name, r.product_type_name) is None}
    assert not unmapped


def test_a_typo_in_a_taxonomy_table_is_caught(monkeypatch):
    monkeypatch.setitem(tx.KAGGLE_SUB_CATEGORY, "Topwear", "Top wear")
    with pytest.raises(ValueError, match="Top wear"):
        tx.validate_taxonomy()
