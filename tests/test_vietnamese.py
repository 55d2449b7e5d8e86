"""Vietnamese front end: cardinal reader, spoken-form expansion, unspeakable-character report."""

from __future__ import annotations

import csv
import logging
import re
import unicodedata

import pytest

from flowtts.text import vietnamese
from flowtts.text.vietnamese import ABBREVIATIONS, find_unspeakable, normalize_vietnamese, read_number
from tests.helpers import DEV_CORPUS, require

CORPUS_METADATA = DEV_CORPUS / "metadata.csv"

NUMBERS = [
    (0, "không"),
    (1, "một"),
    (4, "bốn"),
    (5, "năm"),
    (10, "mười"),
    (11, "mười một"),
    (14, "mười bốn"),
    (15, "mười lăm"),
    (20, "hai mươi"),
    (21, "hai mươi mốt"),
    (24, "hai mươi tư"),
    (25, "hai mươi lăm"),
    (51, "năm mươi mốt"),
    (55, "năm mươi lăm"),
    (99, "chín mươi chín"),
    (100, "một trăm"),
    (101, "một trăm linh một"),
    (104, "một trăm linh bốn"),
    (105, "một trăm linh năm"),
    (110, "một trăm mười"),
    (111, "một trăm mười một"),
    (115, "một trăm mười lăm"),
    (121, "một trăm hai mươi mốt"),
    (1000, "một nghìn"),
    (1001, "một nghìn không trăm linh một"),
    (1005, "một nghìn không trăm linh năm"),
    (1010, "một nghìn không trăm mười"),
    (1100, "một nghìn một trăm"),
    (1234, "một nghìn hai trăm ba mươi tư"),
    (2024, "hai nghìn không trăm hai mươi tư"),
    (10000, "mười nghìn"),
    (15000, "mười lăm nghìn"),
    (21000, "hai mươi mốt nghìn"),
    (100000, "một trăm nghìn"),
    (120000, "một trăm hai mươi nghìn"),
    (1000000, "một triệu"),
    (1000001, "một triệu không trăm linh một"),
    (1005000, "một triệu không trăm linh năm nghìn"),
    (1250000, "một triệu hai trăm năm mươi nghìn"),
    (1000000000, "một tỷ"),
    (2500000000, "hai tỷ năm trăm triệu"),
    (1000000000000, "một nghìn tỷ"),
    (1500000000000, "một nghìn năm trăm tỷ"),
    (-3, "âm ba"),
]

EXPANSIONS = [
    # grouped thousands, decimals, percents, negatives, ranges
    ("120.000 đồng", "một trăm hai mươi nghìn đồng"),
    ("1.250.000", "một triệu hai trăm năm mươi nghìn"),
    ("3,5", "ba phẩy năm"),
    ("0,5", "không phẩy năm"),
    ("2,05", "hai phẩy không năm"),
    ("phiên bản 2.0", "phiên bản hai chấm không"),
    ("10%", "mười phần trăm"),
    ("3,5%", "ba phẩy năm phần trăm"),
    ("-5", "âm năm"),
    ("5-7 ngày", "năm đến bảy ngày"),
    ("5–7 ngày", "năm đến bảy ngày"),
    ("năm 2020 - 2024", "năm hai nghìn không trăm hai mươi đến hai nghìn không trăm hai mươi tư"),
    # dates
    ("15/8", "ngày mười lăm tháng tám"),
    ("ngày 15/8", "ngày mười lăm tháng tám"),
    ("Ngày 15/8", "Ngày mười lăm tháng tám"),
    ("15/8/2024", "ngày mười lăm tháng tám năm hai nghìn không trăm hai mươi tư"),
    ("ngày 30/4/1975", "ngày ba mươi tháng tư năm một nghìn chín trăm bảy mươi lăm"),
    ("tháng 8/2024", "tháng tám năm hai nghìn không trăm hai mươi tư"),
    ("quý I/2024", "quý một năm hai nghìn không trăm hai mươi tư"),
    ("tháng 4", "tháng tư"),
    ("ngày 12 tháng 10", "ngày mười hai tháng mười"),
    ("32/13", "ba mươi hai trên mười ba"),
    # times
    ("7h30", "bảy giờ ba mươi phút"),
    ("7:30", "bảy giờ ba mươi phút"),
    ("7h05", "bảy giờ năm phút"),
    ("20:00", "hai mươi giờ"),
    ("2h sáng", "hai giờ sáng"),
    ("24/7", "hai tư trên bảy"),
    # units
    ("3,5 kg", "ba phẩy năm ki lô gam"),
    ("500 g", "năm trăm gam"),
    ("50 km", "năm mươi ki lô mét"),
    ("50 km/h", "năm mươi ki lô mét trên giờ"),
    ("461 m", "bốn trăm sáu mươi mốt mét"),
    ("15 cm", "mười lăm xen ti mét"),
    ("250 mm", "hai trăm năm mươi mi li mét"),
    ("75 m²", "bảy mươi lăm mét vuông"),
    ("75 m2", "bảy mươi lăm mét vuông"),
    ("5°C", "năm độ xê"),
    ("-5°C", "âm năm độ xê"),
    ("500 ml", "năm trăm mi li lít"),
    ("2 l", "hai lít"),
    ("10 ha", "mười héc ta"),
    ("50.000đ", "năm mươi nghìn đồng"),
    ("20.000 VNĐ", "hai mươi nghìn đồng"),
    ("100 USD", "một trăm đô la Mỹ"),
    ("100h", "một trăm giờ"),
    ("đồng/kg", "đồng trên ki lô gam"),
    ("4 x 5 mét", "bốn nhân năm mét"),
    # abbreviations
    ("TP.HCM", "thành phố Hồ Chí Minh"),
    ("TP. Hà Nội", "thành phố Hà Nội"),
    ("UBND", "ủy ban nhân dân"),
    ("công ty TNHH", "công ty trách nhiệm hữu hạn"),
    ("học sinh THPT", "học sinh trung học phổ thông"),
    ("Bộ GD&ĐT", "Bộ giáo dục và đào tạo"),
    ("Q.1", "quận một"),
    ("CSGT", "cảnh sát giao thông"),
    ("BHXH", "bảo hiểm xã hội"),
    ("ĐH Quốc gia", "đại học Quốc gia"),
    ("ĐHQG", "đại học quốc gia"),
    ("HN và VN", "Hà Nội và Việt Nam"),
    ("cam, táo, v.v.", "cam, táo, vân vân."),
    ("HNX", "HNX"),
    # roman numerals and ordinals
    ("quý III", "quý ba"),
    ("quý IV", "quý bốn"),
    ("thế kỷ XXI", "thế kỷ hai mươi mốt"),
    ("Thế kỷ XX", "Thế kỷ hai mươi"),
    ("khóa XIX", "khóa mười chín"),
    ("lần thứ IX", "lần thứ chín"),
    ("lần thứ I", "lần thứ nhất"),
    ("thứ 4", "thứ tư"),
    ("quý IIII", "quý IIII"),
    # phone numbers and leading-zero digit strings
    ("0912 345 678", "không chín một hai ba bốn năm sáu bảy tám"),
    ("0912345678", "không chín một hai ba bốn năm sáu bảy tám"),
    ("028.3822.1234", "không hai tám ba tám hai hai một hai ba bốn"),
    ("+84 912 345 678", "cộng tám bốn chín một hai ba bốn năm sáu bảy tám"),
    # symbols and typography
    ("A & B", "A và B"),
    ("1 + 1 = 2", "một cộng một bằng hai"),
    ("Hà Nội/Huế", "Hà Nội trên Huế"),
    ("“phố đèn lồng”", '"phố đèn lồng"'),
    ("quà nhỏ – một tấm thiệp – cũng đủ", "quà nhỏ, một tấm thiệp, cũng đủ"),
    ("Chờ đã…", "Chờ đã..."),
    ("đ, e, ê...", "đ, e, ê..."),
    ("Bắc - Nam", "Bắc - Nam"),
    ("(quận 1)", "(quận một)"),
    ("iPhone15", "iPhone mười lăm"),
    ("  nhiều   khoảng\ttrắng \n", "nhiều khoảng trắng"),
]

SENTENCES = [
    (
        "Tôi mua 3,5 kg cam với giá 120.000 đồng.",
        "Tôi mua ba phẩy năm ki lô gam cam với giá một trăm hai mươi nghìn đồng.",
    ),
    (
        "Năm 2024, dân số Việt Nam vượt mốc 100 triệu người.",
        "Năm hai nghìn không trăm hai mươi tư, dân số Việt Nam vượt mốc một trăm triệu người.",
    ),
    ("Ngày 15/8 là ngày cuối cùng để nộp hồ sơ.", "Ngày mười lăm tháng tám là ngày cuối cùng để nộp hồ sơ."),
    (
        "Cửa hàng giảm giá 10% cho tất cả các mặt hàng trong tuần này.",
        "Cửa hàng giảm giá mười phần trăm cho tất cả các mặt hàng trong tuần này.",
    ),
    (
        "Tốc độ tối đa trong khu dân cư là 50 km/h.",
        "Tốc độ tối đa trong khu dân cư là năm mươi ki lô mét trên giờ.",
    ),
    (
        "Căn hộ rộng 75 m² có giá khoảng 3 tỷ đồng.",
        "Căn hộ rộng bảy mươi lăm mét vuông có giá khoảng ba tỷ đồng.",
    ),
    (
        "Đợt rét đậm này nhiệt độ có nơi xuống dưới 5°C.",
        "Đợt rét đậm này nhiệt độ có nơi xuống dưới năm độ xê.",
    ),
    (
        "Số điện thoại của tôi là 0912 345 678.",
        "Số điện thoại của tôi là không chín một hai ba bốn năm sáu bảy tám.",
    ),
    ("Cửa hàng mở cửa 24/7, kể cả ngày lễ.", "Cửa hàng mở cửa hai tư trên bảy, kể cả ngày lễ."),
    (
        "Doanh thu quý III đạt 1,5 nghìn tỷ đồng.",
        "Doanh thu quý ba đạt một phẩy năm nghìn tỷ đồng.",
    ),
    (
        "Văn phòng đại diện đặt tại Q.1, TP.HCM.",
        "Văn phòng đại diện đặt tại quận một, thành phố Hồ Chí Minh.",
    ),
    (
        "Trụ sở UBND TP. Hà Nội nằm trên phố Đinh Tiên Hoàng.",
        "Trụ sở ủy ban nhân dân thành phố Hà Nội nằm trên phố Đinh Tiên Hoàng.",
    ),
    (
        "Bộ GD&ĐT ban hành thông tư mới về dạy thêm, học thêm.",
        "Bộ giáo dục và đào tạo ban hành thông tư mới về dạy thêm, học thêm.",
    ),
    (
        "Giá thịt lợn hơi dao động từ 60.000 đến 65.000 đồng/kg.",
        "Giá thịt lợn hơi dao động từ sáu mươi nghìn đến sáu mươi lăm nghìn đồng trên ki lô gam.",
    ),
    (
        "Nhà sách mở cửa từ 8h đến 22h hằng ngày.",
        "Nhà sách mở cửa từ tám giờ đến hai mươi hai giờ hằng ngày.",
    ),
    (
        "Tính đến ngày 31/12/2023, cả nước có hơn 900.000 doanh nghiệp đang hoạt động.",
        "Tính đến ngày ba mươi mốt tháng mười hai năm hai nghìn không trăm hai mươi ba, "
        "cả nước có hơn chín trăm nghìn doanh nghiệp đang hoạt động.",
    ),
    (
        "Kỳ nghỉ Tết kéo dài 9 ngày, từ 25/1 đến 2/2.",
        "Kỳ nghỉ Tết kéo dài chín ngày, từ ngày hai mươi lăm tháng một đến ngày hai tháng hai.",
    ),
    (
        "Buổi hòa nhạc bắt đầu lúc 20:00, vé đã bán hết.",
        "Buổi hòa nhạc bắt đầu lúc hai mươi giờ, vé đã bán hết.",
    ),
    (
        "Hóa đơn tháng này là 1.250.000 đồng, cao hơn tháng trước 15%.",
        "Hóa đơn tháng này là một triệu hai trăm năm mươi nghìn đồng, cao hơn tháng trước mười lăm phần trăm.",
    ),
    (
        "“Đi đâu đấy?” - ông cụ hỏi lúc 7h30 sáng thứ 4.",
        '"Đi đâu đấy?" - ông cụ hỏi lúc bảy giờ ba mươi phút sáng thứ tư.',
    ),
]


@pytest.mark.parametrize(("n", "words"), NUMBERS)
def test_read_number(n: int, words: str) -> None:
    assert read_number(n) == words


@pytest.mark.parametrize(("text", "spoken"), EXPANSIONS)
def test_expansion(text: str, spoken: str) -> None:
    assert normalize_vietnamese(text) == spoken


@pytest.mark.parametrize(("text", "spoken"), SENTENCES)
def test_sentence(text: str, spoken: str) -> None:
    assert normalize_vietnamese(text) == spoken
    assert find_unspeakable(spoken) == []


def test_zero_tens_word_is_a_module_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vietnamese, "ZERO_TENS_WORD", "lẻ")
    assert read_number(105) == "một trăm lẻ năm"
    assert normalize_vietnamese("1.005 người") == "một nghìn không trăm lẻ năm người"


def test_nfd_input_reads_like_nfc() -> None:
    text = "Ngày 30/4/1975, Bộ GD&ĐT họp tại TP.HCM; nhiệt độ 5°C, giá 120.000 đồng."
    nfd = unicodedata.normalize("NFD", text)
    assert nfd != text
    assert normalize_vietnamese(nfd) == normalize_vietnamese(text)


def test_lowercase_is_optional() -> None:
    assert normalize_vietnamese("Tại TP.HCM") == "Tại thành phố Hồ Chí Minh"
    assert normalize_vietnamese("Tại TP.HCM", lowercase=True) == "tại thành phố hồ chí minh"


def test_abbreviations_argument_extends_the_table() -> None:
    assert normalize_vietnamese("VCCI và UBND", abbreviations={"VCCI": "vê xê xê i"}) == (
        "vê xê xê i và ủy ban nhân dân"
    )
    assert normalize_vietnamese("TP.HCM", abbreviations={"TP.HCM": "Sài Gòn"}) == "Sài Gòn"
    assert "VCCI" not in ABBREVIATIONS


def test_find_unspeakable_reports_symbols_once() -> None:
    assert find_unspeakable("giá © năm € và € nữa") == ["©", "€"]
    assert find_unspeakable("còn 5 cái") == ["5"]
    assert find_unspeakable('Cô hỏi: "Ai (em) lên bảng - nhé?" Ừ; được! Vậy...') == []
    assert find_unspeakable("Привет, 世界") == []


def test_normalize_logs_unspeakable_characters(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=vietnamese.__name__):
        assert normalize_vietnamese("Bản quyền © 2024") == "Bản quyền © hai nghìn không trăm hai mươi tư"
    assert any("©" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=vietnamese.__name__):
        normalize_vietnamese("Giá 120.000 đồng.")
    assert caplog.records == []


def test_corpus_sentences_leave_no_digits_or_unspeakable_characters() -> None:
    with require(CORPUS_METADATA).open(encoding="utf-8", newline="") as f:
        sentences = [row["text"] for row in csv.DictReader(f, delimiter="|")]
    assert len(sentences) > 100
    for sentence in sentences:
        spoken = normalize_vietnamese(sentence)
        assert not re.search(r"\d", spoken), (sentence, spoken)
        assert find_unspeakable(spoken) == [], (sentence, spoken)
        assert normalize_vietnamese(spoken) == spoken, sentence
