import modelseal as ms


def test_owner_cnn_reaches_90_percent_in_5_epochs(owner_cnn, mnist):
    assert ms.train.evaluate(owner_cnn, mnist.test) >= 0.90
